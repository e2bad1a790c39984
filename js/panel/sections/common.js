// Pieces every panel section uses: the collapsible section frame and the line that shows a
// section's load error or the outcome of its last action.

import { busy, h, readForm, setText, showErrors } from "../dom.js";
import { NOT_AVAILABLE } from "../state.js";

/**
 * A collapsible section: <details id="podkit-sec-<id>"> with a summary (title + badge) and a body.
 * Open/closed is remembered per section in localStorage (when available).
 */
export function sectionFrame(id, title) {
  const key = `podkit.panel.open.${id}`;
  let open = true;
  try {
    open = globalThis.localStorage?.getItem(key) !== "0";
  } catch {
    open = true;
  }
  const badge = h("span", { class: "podkit-badge", "aria-live": "off" });
  const body = h("div", { class: "podkit-section-body" });
  const missing = h("p", { class: "podkit-empty podkit-unavailable", hidden: true }, `${title}: ${NOT_AVAILABLE}.`);
  const el = h(
    "details",
    { class: "podkit-section", id: `podkit-sec-${id}`, open },
    h("summary", {}, h("h3", { class: "podkit-section-title" }, title), badge),
    missing,
    body,
  );
  el.addEventListener("toggle", () => {
    try {
      globalThis.localStorage?.setItem(key, el.open ? "1" : "0");
    } catch {
      // storage may be disabled; the section still works
    }
  });
  /** Hide the body and say so when the section's routes are missing (`error` is NOT_AVAILABLE). */
  const setAvailable = (error) => {
    const gone = error === NOT_AVAILABLE;
    if (body.hidden !== gone) body.hidden = gone;
    if (missing.hidden === gone) missing.hidden = !gone;
    if (gone) setText(badge, "");
    return !gone;
  };
  return { el, body, setBadge: (text) => setText(badge, text), setAvailable };
}

/** A status line: {el, ok(text), fail(text), clear()}; announced politely to screen readers. */
export function statusLine() {
  const el = h("div", { class: "podkit-status-line", role: "status", "aria-live": "polite" });
  return {
    el,
    ok(text) {
      el.classList.remove("podkit-error");
      setText(el, text);
    },
    fail(text) {
      el.classList.add("podkit-error");
      setText(el, text);
    },
    clear() {
      el.classList.remove("podkit-error");
      setText(el, "");
    },
  };
}

/** The text of an error for a status line. */
export function errorText(e) {
  return (e && e.message) || String(e);
}

/** A definition list of [label, value] pairs (value: string or node). */
export function statList(pairs) {
  return h(
    "dl",
    { class: "podkit-stats" },
    pairs.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]),
  );
}

/**
 * Wire a validated form: `build(values)` returns {body} or {errors: {field: message}}; errors are
 * shown beside their fields (opening `advanced`, a <details>, when one of its fields is wrong),
 * else `send(body)` runs with the submit button busy and its failure goes to the status line.
 */
export function onValidSubmit({ form, fields, submit, status, build, send, advanced = null }) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const { body, errors } = build(readForm(form));
    if (advanced && errors && Object.keys(errors).some((k) => advanced.contains(fields[k]?.input)))
      advanced.open = true;
    if (!showErrors(fields, errors || {})) {
      status.fail("Check the highlighted fields.");
      return;
    }
    busy(
      submit,
      () => send(body),
      (e) => status.fail(errorText(e)),
    );
  });
}
