// The PodKit sidebar tab inside ComfyUI (frontend 1.27 and 1.58): downloads, caches, training,
// generation metrics and the upload outbox, live from `podkit.*` events with an HTTP re-sync when
// the tab opens and after a reconnect. The panel itself lives in ./panel/ (shared with the
// standalone page); this file only wires it to ComfyUI's app, api, settings and toasts.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { createApi } from "./panel/api.js";
import { EVENTS, createController } from "./panel/controller.js";
import { mountPanel } from "./panel/mount.js";
import { badgeText } from "./panel/state.js";

const TAB_ID = "podkit-panel";
const REFRESH_SETTING = "PodKit.Panel.RefreshSeconds";
const TOASTS_SETTING = "PodKit.Panel.Toasts";

function setting(id, fallback) {
  try {
    const v = app.extensionManager?.setting?.get(id);
    return v === undefined || v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

// 1.58's toast method per severity ("warn" is the severity name of 1.27's add())
const MODERN_TOAST = { success: "success", info: "info", warn: "warning", error: "error" };

/** A toast on both toast APIs (1.58: success()/warning()/error(); 1.27: add()), always with a duration. */
function showToast({ severity, title, detail }) {
  if (!setting(TOASTS_SETTING, true)) return;
  const t = app.extensionManager?.toast;
  if (!t) return;
  const ms = severity === "error" || severity === "warn" ? 10000 : 5000;
  const modern = t[MODERN_TOAST[severity] || "success"];
  if (typeof modern === "function") modern.call(t, title, { description: detail, duration: ms });
  else if (typeof t.add === "function") t.add({ severity, summary: title, detail, life: ms });
}

// api.fetchApi adds ComfyUI's headers and (js/podkit.js) the PodKit bearer token.
const controller = createController({ api: createApi((route, init) => api.fetchApi(route, init)), toast: showToast });

function updateBadge(state) {
  const text = badgeText(state);
  try {
    // the tab list is reactive; assigning on our own tab object would not re-render the badge
    const tab = app.extensionManager?.getSidebarTabs?.().find((t) => t.id === TAB_ID);
    if (tab && tab.iconBadge !== text) tab.iconBadge = text || null;
  } catch {
    // an older frontend without badges: the panel still works
  }
}

let mounted = null;

app.registerExtension({
  name: "podkit.panel",
  settings: [
    {
      id: REFRESH_SETTING,
      name: "Panel re-sync interval (seconds)",
      type: "number",
      defaultValue: 15,
      attrs: { min: 2, max: 600 },
      tooltip: "How often the open PodKit panel re-reads everything over HTTP; live events update it in between.",
    },
    {
      id: TOASTS_SETTING,
      name: "Notify when downloads, trainings and uploads finish or fail, and before the idle stop",
      type: "boolean",
      defaultValue: true,
    },
  ],
  commands: [
    {
      id: "podkit.panel.refresh",
      label: "Refresh the PodKit panel",
      icon: "pi pi-refresh",
      function: () => controller.resync(),
    },
  ],
  setup() {
    // listeners before the socket delivers anything: unknown message types are dropped
    for (const name of EVENTS) api.addEventListener(name, (event) => controller.onEvent(name, event.detail));
    api.addEventListener("reconnecting", () => controller.onConnection(false));
    api.addEventListener("reconnected", () => controller.onConnection(true));
    controller.store.subscribe(updateBadge);

    const manager = app.extensionManager;
    const register =
      manager?.registerSidebarTab?.bind(manager) || manager?.sidebarTab?.registerSidebarTab?.bind(manager.sidebarTab);
    if (!register) {
      console.warn(
        "[PodKit] this ComfyUI frontend has no sidebar tabs; the panel is served standalone by `python <podkit> serve`",
      );
      return;
    }
    register({
      id: TAB_ID,
      icon: "pi pi-cloud-download",
      title: "PodKit",
      tooltip: "PodKit: downloads, caches, training, metrics, uploads",
      type: "custom",
      render(el) {
        // el may be reused (another custom tab's DOM still inside): mountPanel replaces it all
        if (mounted) mounted.dispose();
        mounted = mountPanel(el, controller, { refreshSeconds: () => setting(REFRESH_SETTING, 15) });
      },
      destroy() {
        if (mounted) mounted.dispose();
        mounted = null;
      },
    });
    // the badge counts active jobs even while the tab is closed
    controller.resync();
  },
});
