// Outbox: uploads still pending or failed (Save to R2 spools images and uploads them in the
// background), with a retry per item and for all of them.

import { formatAgo, formatBytes } from "../format.js";
import { outboxOpen } from "../state.js";
import { busy, h, setErrorText, setPill, setText, statusPill, syncList } from "../dom.js";
import { errorText, sectionFrame, statusLine } from "./common.js";

const ORDER = ["pending", "uploading", "spooling", "failed", "done"];

function outboxRow(controller, onError) {
  const name = h("span", { class: "podkit-row-name" });
  const pill = statusPill("pending");
  const retry = h("button", { type: "button", class: "podkit-small" }, "Retry");
  const meta = h("div", { class: "podkit-row-meta" });
  const err = h("div", { class: "podkit-row-error" });
  const el = h("li", { class: "podkit-row" }, h("div", { class: "podkit-row-head" }, name, pill, retry), meta, err);
  let item = null;
  retry.addEventListener("click", () =>
    busy(
      retry,
      async () => {
        await controller.api.retryOutbox([item.id]);
        controller.load("outbox");
      },
      onError,
    ),
  );
  return {
    el,
    update(next) {
      item = next;
      el.dataset.status = next.status;
      setText(name, next.key);
      name.title = `${next.bucket}/${next.key}`;
      setPill(pill, next.status);
      retry.hidden = !["failed", "pending"].includes(next.status);
      retry.setAttribute("aria-label", `Retry upload of ${next.key}`);
      setText(
        meta,
        [
          formatBytes(next.size),
          `${next.attempts} attempt${next.attempts === 1 ? "" : "s"}`,
          formatAgo(next.updated, Date.now() / 1000),
        ].join(" · "),
      );
      setErrorText(err, next.last_error);
    },
  };
}

export function outboxSection(controller) {
  const frame = sectionFrame("outbox", "Outbox");
  const status = statusLine();
  const loadError = statusLine();
  const counts = h("p", { class: "podkit-row-meta" });
  const list = h("ul", { class: "podkit-list", "aria-label": "Pending and failed uploads" });
  const empty = h("p", { class: "podkit-empty" }, "Every upload is done.");
  const retryAll = h("button", { type: "button" }, "Retry all failed");
  const rows = new Map();
  const onError = (e) => status.fail(errorText(e));
  retryAll.addEventListener("click", () =>
    busy(
      retryAll,
      async () => {
        const answer = await controller.api.retryOutbox();
        status.ok(`Requeued ${answer.requeued} upload${answer.requeued === 1 ? "" : "s"}.`);
        controller.load("outbox");
      },
      onError,
    ),
  );
  frame.body.append(loadError.el, counts, empty, list, h("div", { class: "podkit-actions" }, retryAll), status.el);
  return {
    el: frame.el,
    update(state) {
      if (!frame.setAvailable(state.outbox.error)) return;
      const open = outboxOpen(state);
      syncList(
        list,
        rows,
        open.slice(0, 100),
        (i) => i.id,
        () => outboxRow(controller, onError),
      );
      const c = state.outbox.counts || {};
      const any = Object.values(c).some((n) => n > 0);
      empty.hidden = open.length > 0 || !any;
      const text = ORDER.filter((k) => c[k])
        .map((k) => `${k} ${c[k]}`)
        .join(" · ");
      setText(counts, text || (state.outbox.loaded ? "No uploads yet." : ""));
      retryAll.disabled = !c.failed;
      const waiting = (c.pending || 0) + (c.failed || 0) + (c.uploading || 0) + (c.spooling || 0);
      frame.setBadge(c.failed ? `${c.failed} failed` : waiting ? `${waiting} pending` : "");
      if (state.outbox.error) loadError.fail(`Outbox: ${state.outbox.error}`);
      else loadError.clear();
    },
  };
}
