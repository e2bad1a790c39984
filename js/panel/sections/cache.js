// Models & cache: the shared model cache (size against its cap, entries, hit rate, free disk),
// the LoRA RAM cache, the VAE decode cache and the generation cache, an eviction plan shown before the purge runs, and
// the LoRA bucket listing.

import { formatAgo, formatBytes, formatRate, fraction, parseSize } from "../format.js";
import { busy, field, h, progressBar, setText, syncList } from "../dom.js";
import { downloadedModels } from "../state.js";
import { errorText, sectionFrame, statList, statusLine } from "./common.js";

function hitRate(hits, misses) {
  const total = (hits || 0) + (misses || 0);
  return total ? hits / total : null;
}

function cacheBlock(title, s, extra = []) {
  if (!s) return null;
  const size = s.bytes_on_disk ?? s.bytes;
  const bar = progressBar(`${title} use`);
  const f = fraction(size, s.max_bytes);
  bar.set(f ?? 0, `${formatBytes(size)} of ${formatBytes(s.max_bytes)}`);
  const rate = s.hit_rate ?? hitRate(s.hits, s.misses);
  return h(
    "div",
    { class: "podkit-cache-block" },
    h("h4", {}, title),
    bar.el,
    statList([
      ["Size", `${formatBytes(size)} of ${formatBytes(s.max_bytes)}`],
      ["Entries", String(s.entries ?? 0)],
      ["Hit rate", `${formatRate(rate)} (${s.hits ?? 0} hits, ${s.misses ?? 0} misses)`],
      ...extra,
    ]),
  );
}

/** The decode cache's own counters (a RAM tier plus an optional disk tier) in cacheBlock's terms. */
function decodeStats(d) {
  if (!d) return null;
  return {
    bytes: d.ram_bytes,
    max_bytes: d.ram_max_bytes,
    entries: d.ram_entries,
    hits: (d.ram_hits || 0) + (d.disk_hits || 0),
    misses: d.misses,
    hit_rate: d.hit_rate,
  };
}

/** Where decoded images outlive the process: the model cache, the generation cache (0.33+), or nowhere. */
function decodeDiskTier(d) {
  if (!d.disk_enabled) return "off";
  return `${d.disk_tier || "on"} (${d.disk_hits ?? 0} hits)`;
}

/** The generation cache (ComfyUI 0.33+): its size and hits, the node types it served most; or why it is off. */
function generationBlock(g) {
  if (!g) return null;
  if (!g.enabled) {
    return h(
      "div",
      { class: "podkit-cache-block" },
      h("h4", {}, "Generation cache"),
      statList([["State", `off (${g.reason || "not available"})`]]),
    );
  }
  const t = g.totals || {};
  const top = Object.entries(g.nodes || {})
    .filter(([, c]) => c.hits)
    .sort((a, b) => b[1].hits - a[1].hits)
    .slice(0, 3)
    .map(([name, c]) => `${name} ${c.hits}`)
    .join(" · ");
  return cacheBlock("Generation cache", { bytes: g.bytes, max_bytes: g.max_bytes, entries: g.entries, hits: t.hits, misses: t.misses }, [
    ["Served", formatBytes(t.bytes_served)],
    ["Stored", `${t.stores ?? 0} (${formatBytes(t.bytes_stored)})`],
    ["Most hits", top || "—"],
  ]);
}

function evictionForm(controller) {
  const target = field({
    label: "Shrink the model cache to",
    name: "target",
    hint: "A size such as 50G or 512M; 0 empties everything not in use.",
    attrs: { placeholder: "50G", inputmode: "text" },
  });
  const planButton = h("button", { type: "submit" }, "Show eviction plan");
  const purgeButton = h("button", { type: "button", class: "podkit-danger", hidden: true }, "Purge");
  const status = statusLine();
  const planList = h("ul", { class: "podkit-list podkit-plan", "aria-label": "Entries the purge would remove" });
  let planned = null;
  const form = h(
    "form",
    { class: "podkit-form", "aria-label": "Cache eviction", novalidate: true },
    target.wrap,
    h("div", { class: "podkit-actions" }, planButton, purgeButton),
    status.el,
    planList,
  );
  const reset = () => {
    planned = null;
    purgeButton.hidden = true;
    planList.replaceChildren();
  };
  target.input.addEventListener("input", reset);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const bytes = parseSize(target.input.value);
    if (bytes === null) {
      target.setError("Enter a size such as 50G, 512M or a number of bytes.");
      target.input.focus();
      return;
    }
    target.setError("");
    busy(
      planButton,
      async () => {
        const answer = await controller.api.planEviction(bytes);
        const plan = answer.plan || {};
        const entries = plan.entries || [];
        planned = bytes;
        planList.replaceChildren(
          ...entries
            .slice(0, 50)
            .map((e) =>
              h(
                "li",
                { class: "podkit-row" },
                h("span", { class: "podkit-row-name", title: e.digest }, e.source || e.digest),
                " ",
                h(
                  "span",
                  { class: "podkit-row-meta" },
                  `${formatBytes(e.size)} · used ${formatAgo(e.last_used, Date.now() / 1000)}`,
                ),
              ),
            ),
        );
        const skipped = (plan.skipped_in_use || 0) + (plan.skipped_pinned || 0);
        status.ok(
          entries.length
            ? `Would remove ${entries.length} entr${entries.length === 1 ? "y" : "ies"}, freeing ${formatBytes(plan.freed_bytes)}${skipped ? ` (${skipped} in use or pinned kept)` : ""}.`
            : "Nothing to remove: the cache is already under that size.",
        );
        purgeButton.hidden = entries.length === 0;
        setText(
          purgeButton,
          `Purge ${entries.length} entr${entries.length === 1 ? "y" : "ies"} (${formatBytes(plan.freed_bytes)})`,
        );
      },
      (e) => status.fail(errorText(e)),
    );
  });
  purgeButton.addEventListener("click", () =>
    busy(
      purgeButton,
      async () => {
        const answer = await controller.api.evict(planned);
        const done = answer.evicted || {};
        const n = (done.entries || []).length;
        status.ok(`Removed ${n} entr${n === 1 ? "y" : "ies"}, freed ${formatBytes(done.freed_bytes)}.`);
        reset();
        controller.load("cache");
      },
      (e) => status.fail(errorText(e)),
    ),
  );
  return form;
}

function loraRow() {
  const name = h("span", { class: "podkit-row-name" });
  const meta = h("span", { class: "podkit-row-meta" });
  const el = h("li", { class: "podkit-row podkit-row-inline" }, name, meta);
  return {
    el,
    update(item) {
      setText(name, item.key);
      name.title = item.uri || item.key;
      setText(meta, formatBytes(item.size));
    },
  };
}

export function cacheSection(controller) {
  const frame = sectionFrame("cache", "Models & cache");
  const stats = h("div", { class: "podkit-cache-stats", "aria-live": "off" });
  const cacheError = statusLine();
  const loraStatus = statusLine();
  const loraList = h("ul", { class: "podkit-list", "aria-label": "LoRAs in the bucket" });
  const loraRows = new Map();
  const loraTitle = h("h4", {}, "LoRAs in the bucket");
  const refresh = h("button", { type: "button", class: "podkit-small" }, "Refresh list");
  refresh.addEventListener("click", () =>
    busy(
      refresh,
      async () => controller.store.dispatch({ type: "loras", listing: await controller.api.refreshLoras() }),
      (e) => loraStatus.fail(errorText(e)),
    ),
  );
  const models = h("div", { class: "podkit-cache-block podkit-models" });
  frame.body.append(
    cacheError.el,
    stats,
    models,
    evictionForm(controller),
    h("div", { class: "podkit-row-head" }, loraTitle, refresh),
    loraStatus.el,
    loraList,
  );
  let shownStats = null;
  let shownModels = "";

  return {
    el: frame.el,
    update(state) {
      if (!frame.setAvailable(state.cache.error)) return;
      const s = state.cache.stats;
      if (s && s !== shownStats) {
        shownStats = s;
        const mc = s.model_cache;
        stats.replaceChildren(
          ...[
            cacheBlock("Model cache", mc, [
              ["Free disk", formatBytes(mc && mc.free_bytes)],
              ["Evictions", `${mc ? mc.evictions : 0} (${formatBytes(mc && mc.evicted_bytes)})`],
              ["Downloaded", formatBytes(mc && mc.fetched_bytes)],
            ]),
            cacheBlock("LoRA RAM cache", s.lora_ram),
            cacheBlock(
              "VAE decode cache",
              decodeStats(s.decode),
              s.decode ? [["Disk tier", decodeDiskTier(s.decode)]] : [],
            ),
            generationBlock(s.generation),
          ].filter(Boolean),
        );
        frame.setBadge(mc ? formatBytes(mc.bytes_on_disk) : "");
      }
      const m = downloadedModels(state);
      const key = JSON.stringify(m);
      if (key !== shownModels) {
        shownModels = key;
        models.replaceChildren(
          h("h4", {}, "Downloaded models"),
          m.count
            ? statList([
                ["Total", `${m.count} file${m.count === 1 ? "" : "s"}, ${formatBytes(m.bytes)}`],
                ...m.types.map(([type, t]) => [
                  type,
                  `${t.count} file${t.count === 1 ? "" : "s"}, ${formatBytes(t.bytes)}`,
                ]),
              ])
            : h("p", { class: "podkit-empty" }, "No finished downloads listed."),
        );
      }
      if (state.cache.error) cacheError.fail(`Cache: ${state.cache.error}`);
      else cacheError.clear();
      const listing = state.loras.listing;
      const items = (listing && listing.items) || [];
      syncList(loraList, loraRows, items.slice(0, 200), (i) => i.uri || i.key, loraRow);
      if (state.loras.error) loraStatus.fail(`LoRA list: ${state.loras.error}`);
      else if (listing && listing.error) loraStatus.fail(`LoRA list: ${listing.error}`);
      else if (listing)
        loraStatus.ok(`${items.length} LoRA${items.length === 1 ? "" : "s"} in ${listing.bucket || "the bucket"}.`);
    },
  };
}
