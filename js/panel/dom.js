// Tiny DOM helpers shared by the panel's sections: element builder, labelled fields with an error
// slot, progress bars, keyed lists that update rows in place (so focus and scroll survive live
// updates). Browser-only; nothing runs at import time.

let uid = 0;
/** A page-unique id for label/aria wiring. */
export function nextId(prefix = "podkit") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/**
 * h("button", {class: "x", onclick: fn, "aria-label": "…"}, "text", child, [more]) → element.
 * Attributes: `class`, `text`, `on<event>` (listener), `dataset` (object), booleans (set when true),
 * anything else via setAttribute. Children: strings, nodes, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "value") node.value = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
}

/** Replace `node`'s text only when it changed (no layout churn on identical updates). */
export function setText(node, text) {
  const t = text ?? "";
  if (node.textContent !== t) node.textContent = t;
}

/**
 * A labelled form control with a hint and an error message slot:
 * {wrap, input, error, setError(msg)}. `control` is "input" | "select" | "textarea".
 */
export function field({ label, name, control = "input", type = "text", options, hint, attrs = {} }) {
  const id = nextId(`podkit-${name}`);
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  let input;
  if (control === "select") {
    input = h(
      "select",
      { id, name, ...attrs },
      (options || []).map(([value, text]) => h("option", { value }, text)),
    );
  } else if (control === "textarea") {
    input = h("textarea", { id, name, rows: 4, spellcheck: "false", ...attrs });
  } else {
    input = h("input", { id, name, type, autocomplete: "off", spellcheck: "false", ...attrs });
  }
  input.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
  const error = h("div", { id: errorId, class: "podkit-field-error", role: "alert", hidden: true });
  const wrap = h(
    "div",
    { class: `podkit-field podkit-field-${control}${type === "checkbox" ? " podkit-field-check" : ""}` },
    type === "checkbox" ? [input, h("label", { for: id }, label)] : [h("label", { for: id }, label), input],
    hint ? h("div", { id: hintId, class: "podkit-hint" }, hint) : null,
    error,
  );
  const setError = (msg) => {
    error.hidden = !msg;
    error.textContent = msg || "";
    if (msg) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  };
  return { wrap, input, error, setError };
}

/** Read named controls of a form into a plain object (checkboxes as booleans). */
export function readForm(form) {
  const out = {};
  for (const c of form.querySelectorAll("input[name], select[name], textarea[name]")) {
    out[c.name] = c.type === "checkbox" ? c.checked : c.value;
  }
  return out;
}

/** Show `errors[name]` beside each field of `fields` ({name: field}); returns true when none. */
export function showErrors(fields, errors) {
  let first = null;
  for (const [name, f] of Object.entries(fields)) {
    const msg = errors && errors[name];
    f.setError(msg);
    if (msg && !first) first = f.input;
  }
  if (first) first.focus();
  return !first;
}

/** A progress bar: {el, set(fraction|null, label)}; null shows an indeterminate bar. */
export function progressBar(label) {
  const fill = h("div", { class: "podkit-progress-fill" });
  const el = h(
    "div",
    { class: "podkit-progress", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100 },
    fill,
  );
  const set = (f, text) => {
    if (f === null || f === undefined) {
      el.classList.add("podkit-indeterminate");
      el.removeAttribute("aria-valuenow");
      fill.style.width = "";
    } else {
      const pct = Math.floor(Math.min(1, Math.max(0, f)) * 100);
      el.classList.remove("podkit-indeterminate");
      el.setAttribute("aria-valuenow", String(pct));
      fill.style.width = `${pct}%`;
    }
    if (text) el.setAttribute("aria-valuetext", text);
  };
  return { el, set };
}

/**
 * Keep `container`'s children in the order of `items`, one per key: `create(item)` returns a row
 * object {el, update(item)}; rows of vanished keys are removed. Existing rows are updated in place.
 */
export function syncList(container, rows, items, key, create) {
  const seen = new Set();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    seen.add(k);
    let row = rows.get(k);
    if (!row) {
      row = create(item);
      rows.set(k, row);
    }
    row.update(item);
    const want = prev ? prev.nextSibling : container.firstChild;
    if (want !== row.el) container.insertBefore(row.el, want);
    prev = row.el;
  }
  for (const [k, row] of rows) {
    if (!seen.has(k)) {
      row.el.remove();
      rows.delete(k);
    }
  }
}

/** A small status pill ("running", "failed", …) styled by status. */
export function statusPill(status) {
  return h("span", { class: `podkit-pill podkit-pill-${status}` }, status);
}

/** Show `status` in a pill made by statusPill. */
export function setPill(pill, status) {
  setText(pill, status);
  pill.className = `podkit-pill podkit-pill-${status}`;
}

/** Show an error text in `node`, hidden when there is none. */
export function setErrorText(node, text) {
  setText(node, text || "");
  node.hidden = !text;
}

/** Run an async button action with the button disabled meanwhile; errors go to `onError`. */
export async function busy(button, fn, onError) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } catch (e) {
    if (onError) onError(e);
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}
