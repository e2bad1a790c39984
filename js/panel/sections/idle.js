// The idle stop, at the top of the panel: what keeps the pod busy or how long it has been idle, a
// countdown to the idle action that ticks every second between events (GET /podkit/idle,
// `podkit.idle`), and Keep alive (POST /podkit/idle/keepalive). Highlighted while warning. Not a
// collapsible section: a pod about to stop must be seen whatever the sections' open state.

import { idlePolicyText } from "../format.js";
import { NOT_AVAILABLE, idleDue, idleView } from "../state.js";
import { busy, h, setText } from "../dom.js";
import { errorText, statusLine } from "./common.js";

const TICK_MS = 1000;
const CONFIRM_MS = 5000;

/**
 * @param {ReturnType<import("../controller.js").createController>} controller
 * @param {object} [options]
 * @param {() => number} [options.now] local clock in ms (the controller's stamps use the same)
 * @returns {{el: HTMLElement, update: (state: object) => void, dispose: () => void}}
 */
export function idleBlock(controller, { now = () => Date.now() } = {}) {
  const lead = h("span", { class: "podkit-idle-lead" });
  // the lead's last word stays with the clock ("in 4:32") when the sidebar is narrow
  const word = h("span");
  const countdown = h("strong", { class: "podkit-idle-countdown", hidden: true });
  const when = h("span", { class: "podkit-idle-when" }, word, " ", countdown);
  // role=timer: read on demand, never announced every second (the warning toast announces itself)
  const text = h("span", { class: "podkit-idle-text", role: "timer", "aria-atomic": "true" }, lead, " ", when);
  const keep = h(
    "button",
    { type: "button", class: "podkit-small podkit-idle-keep", hidden: true, title: "Restart the idle clock" },
    "Keep alive",
  );
  const policy = h("div", { class: "podkit-row-meta podkit-idle-policy" });
  const missing = h("p", { class: "podkit-empty podkit-unavailable", hidden: true }, `Idle stop: ${NOT_AVAILABLE}.`);
  const status = statusLine();
  const el = h(
    "div",
    { id: "podkit-idle", class: "podkit-idle", role: "group", "aria-label": "Idle stop", hidden: true },
    h("div", { class: "podkit-idle-head" }, text, keep),
    policy,
    missing,
    status.el,
  );

  let last = null;
  let timer = null;
  let disposed = false;
  let attached = false;
  let askedFor = null; // the idle answer a re-read was already asked for
  let confirmUntil = 0;

  keep.addEventListener("click", () =>
    busy(
      keep,
      async () => {
        await controller.keepAlive();
        status.ok("Idle clock restarted.");
        confirmUntil = now() + CONFIRM_MS;
      },
      (e) => status.fail(`Keep alive: ${errorText(e)}`),
    ),
  );

  function paint() {
    if (!last) return;
    const t = now();
    const v = idleView(last, t);
    const show = v.loaded || !v.available;
    if (el.hidden === show) el.hidden = !show;
    if (!show) return;
    el.dataset.phase = v.available ? v.phase || "" : "unavailable";
    el.classList.toggle("podkit-idle-warning", v.available && v.warning);
    if (missing.hidden !== v.available) missing.hidden = v.available;
    text.hidden = !v.available;
    const cut = v.countdown ? v.lead.lastIndexOf(" ") : -1;
    setText(lead, cut < 0 ? v.lead : v.lead.slice(0, cut));
    setText(word, cut < 0 ? "" : v.lead.slice(cut + 1));
    setText(countdown, v.countdown);
    countdown.hidden = !v.countdown;
    if (keep.hidden === v.enabled) keep.hidden = !v.enabled;
    const hint = v.available ? idlePolicyText(v.policy) : "";
    setText(policy, hint);
    if (confirmUntil && t > confirmUntil) {
      confirmUntil = 0;
      status.clear();
    }
    // no events (the standalone page) or one missed: re-read once the local clock says it is due
    if (idleDue(last, t) && askedFor !== last.idle.current) {
      askedFor = last.idle.current;
      controller.soon("idle", TICK_MS);
    }
    schedule(v.counting || confirmUntil > 0);
  }

  function schedule(ticking) {
    if (!ticking || disposed) {
      clearInterval(timer);
      timer = null;
      return;
    }
    if (timer === null) timer = setInterval(tick, TICK_MS);
  }

  function tick() {
    // ComfyUI may drop the sidebar element without telling: stop with it
    if (el.isConnected) attached = true;
    else if (attached) {
      dispose();
      return;
    }
    paint();
  }

  function dispose() {
    disposed = true;
    clearInterval(timer);
    timer = null;
  }

  return {
    el,
    update(state) {
      if (disposed) return;
      last = state;
      if (state.idle.error && state.idle.error !== NOT_AVAILABLE) status.fail(`Idle stop: ${state.idle.error}`);
      else if (!confirmUntil) status.clear();
      paint();
    },
    dispose,
  };
}
