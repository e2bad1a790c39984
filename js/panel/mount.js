// Mounts the whole PodKit panel (header, the idle stop, the five sections) into an element, for
// both hosts: the ComfyUI sidebar tab (js/podkit_panel.js) and the standalone page (web/index.html).
// Keeps it in step with the controller's store and re-syncs on a timer; everything stops by itself
// once the element is no longer in the document (ComfyUI reuses or drops sidebar elements without
// telling).

import { h, setText } from "./dom.js";
import { DOWNLOAD_ACTIVE, TRAINING_ACTIVE } from "./state.js";
import { cacheSection } from "./sections/cache.js";
import { downloadsSection } from "./sections/downloads.js";
import { idleBlock } from "./sections/idle.js";
import { monitorSection } from "./sections/monitor.js";
import { outboxSection } from "./sections/outbox.js";
import { trainingSection } from "./sections/training.js";

const STYLE_ID = "podkit-panel-styles";

/** Load panel.css (next to this module) once per document. */
export function ensureStyles(doc = document) {
  if (doc.getElementById(STYLE_ID)) return;
  const link = doc.createElement("link");
  link.id = STYLE_ID;
  link.rel = "stylesheet";
  link.href = new URL("./panel.css", import.meta.url).href;
  doc.head.appendChild(link);
}

const CONNECTION_TEXT = { live: "connected", connecting: "connecting…", offline: "server unreachable" };

function hasActiveJobs(state) {
  return (
    Object.values(state.downloads.byId).some((j) => DOWNLOAD_ACTIVE.has(j.status)) ||
    Object.values(state.training.byId).some((j) => TRAINING_ACTIVE.has(j.status))
  );
}

/**
 * Build the panel inside `container` (its old content is replaced) and keep it live.
 *
 * @param {HTMLElement} container
 * @param {ReturnType<import("./controller.js").createController>} controller
 * @param {object} [options]
 * @param {() => number} [options.refreshSeconds] full re-sync period (read at every tick)
 * @param {number|null} [options.pollMs] quick poll of jobs while some are active (hosts without events)
 * @param {HTMLElement[]} [options.headerExtras] extra controls placed in the header (token field…)
 * @returns {{root: HTMLElement, dispose: () => void}}
 */
export function mountPanel(
  container,
  controller,
  { refreshSeconds = () => 10, pollMs = null, headerExtras = [] } = {},
) {
  ensureStyles(container.ownerDocument);
  const conn = h("span", { class: "podkit-conn", role: "status", "aria-live": "polite" });
  const refresh = h(
    "button",
    { type: "button", class: "podkit-small", "aria-label": "Refresh the PodKit panel" },
    "Refresh",
  );
  const sections = [downloadsSection, cacheSection, trainingSection, monitorSection, outboxSection].map((make) =>
    make(controller),
  );
  // the idle stop sits right under the header: pod-wide and urgent, it stays in view whichever
  // sections are collapsed or however long their lists grow
  const idle = idleBlock(controller);
  const parts = [idle, ...sections];
  const root = h(
    "div",
    { id: "podkit-root", class: "podkit-panel" },
    h(
      "header",
      { class: "podkit-header" },
      h("h2", { class: "podkit-title" }, "PodKit"),
      conn,
      refresh,
      ...headerExtras,
    ),
    idle.el,
    sections.map((s) => s.el),
  );
  container.replaceChildren(root);

  let disposed = false;
  let fullTimer = null;
  let pollTimer = null;
  // gone = was in the document and no longer is (a host may mount before attaching the element)
  let attached = root.isConnected;
  const gone = () => {
    if (root.isConnected) attached = true;
    return attached && !root.isConnected;
  };
  const render = (state) => {
    if (disposed) return;
    if (gone()) {
      dispose();
      return;
    }
    setText(conn, CONNECTION_TEXT[state.connection] || state.connection);
    conn.dataset.state = state.connection;
    for (const s of parts) {
      try {
        s.update(state);
      } catch (e) {
        console.error("[PodKit] panel section failed to render", e);
      }
    }
  };
  const unsubscribe = controller.store.subscribe(render);

  function dispose() {
    if (disposed) return;
    disposed = true;
    unsubscribe();
    for (const s of parts) if (s.dispose) s.dispose();
    clearTimeout(fullTimer);
    clearTimeout(pollTimer);
  }

  const alive = () => {
    if (!disposed && gone()) dispose();
    return !disposed;
  };
  const scheduleFull = () => {
    const seconds = Math.min(3600, Math.max(1, Number(refreshSeconds()) || 10));
    fullTimer = setTimeout(async () => {
      if (!alive()) return;
      await controller.resync();
      if (alive()) scheduleFull();
    }, seconds * 1000);
  };
  const schedulePoll = () => {
    if (!pollMs) return;
    pollTimer = setTimeout(async () => {
      if (!alive()) return;
      if (hasActiveJobs(controller.store.get())) await controller.poll();
      if (alive()) schedulePoll();
    }, pollMs);
  };

  refresh.addEventListener("click", async () => {
    refresh.disabled = true;
    try {
      await controller.resync();
    } finally {
      refresh.disabled = false;
    }
  });

  render(controller.store.get());
  // the panel just opened: events may have been missed while it was closed
  controller.resync();
  scheduleFull();
  schedulePoll();
  return { root, dispose };
}
