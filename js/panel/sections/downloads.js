// Downloads: the add form (Hugging Face, CivitAI, URL, bucket, or a pasted manifest), the active
// jobs with progress, speed and ETA and a cancel button, and the history.

import { downloadProgressText, formatAgo, fraction } from "../format.js";
import { DOWNLOAD_OPEN, downloadGroups } from "../state.js";
import { MODEL_TYPES, buildDownloadRequest } from "../validate.js";
import {
  busy,
  field,
  h,
  progressBar,
  setErrorText,
  setPill,
  setText,
  showErrors,
  statusPill,
  syncList,
} from "../dom.js";
import { errorText, onValidSubmit, sectionFrame, statusLine } from "./common.js";

const SOURCES = [
  ["hf", "Hugging Face"],
  ["civitai", "CivitAI"],
  ["url", "URL"],
  ["bucket", "Bucket (R2/S3)"],
  ["manifest", "Manifest"],
];

function downloadForm(controller) {
  const f = {
    source: field({ label: "Source", name: "source", control: "select", options: SOURCES }),
    repo_id: field({ label: "Repository or file URL", name: "repo_id", attrs: { placeholder: "owner/name" } }),
    filename: field({
      label: "File in the repository",
      name: "filename",
      hint: "Empty: the whole repository.",
      attrs: { placeholder: "model.safetensors" },
    }),
    revision: field({ label: "Revision", name: "revision", attrs: { placeholder: "main" } }),
    civitai: field({ label: "Model version id or civitai.com URL", name: "civitai", attrs: { inputmode: "url" } }),
    url: field({ label: "URL", name: "url", type: "url", attrs: { placeholder: "https://…/model.safetensors" } }),
    uri: field({ label: "Object URI", name: "uri", attrs: { placeholder: "r2://bucket/key.safetensors" } }),
    manifest: field({
      label: "Manifest (YAML or JSON)",
      name: "manifest",
      control: "textarea",
      hint: "A list of items, or {items: [...]}, as in the README.",
    }),
    type: field({
      label: "Model type",
      name: "type",
      control: "select",
      options: [["", "detect from the file"], ...MODEL_TYPES.map((t) => [t, t])],
    }),
    name: field({ label: "Save as (file name)", name: "name", attrs: { placeholder: "optional" } }),
    sha256: field({ label: "SHA-256", name: "sha256", attrs: { placeholder: "optional, verified after download" } }),
    force: field({ label: "Download again even if present", name: "force", type: "checkbox" }),
  };
  const bySource = {
    hf: ["repo_id", "filename", "revision"],
    civitai: ["civitai"],
    url: ["url"],
    bucket: ["uri"],
    manifest: ["manifest"],
  };
  const perItem = ["type", "name", "sha256"];
  const main = ["source", "repo_id", "filename", "revision", "civitai", "url", "uri", "manifest"];
  const submit = h("button", { type: "submit", class: "podkit-primary" }, "Add download");
  const status = statusLine();
  const options = h(
    "details",
    { class: "podkit-advanced" },
    h("summary", {}, "Options"),
    Object.entries(f)
      .filter(([name]) => !main.includes(name))
      .map(([, x]) => x.wrap),
  );
  const form = h(
    "form",
    { class: "podkit-form", "aria-label": "Add a download", novalidate: true },
    main.map((name) => f[name].wrap),
    options,
    h("div", { class: "podkit-actions" }, submit),
    status.el,
  );
  const showSource = () => {
    const src = f.source.input.value;
    for (const [name, x] of Object.entries(f)) {
      if (name === "source" || name === "force") continue;
      const visible = perItem.includes(name) ? src !== "manifest" : bySource[src].includes(name);
      x.wrap.hidden = !visible;
    }
  };
  f.source.input.addEventListener("change", () => {
    showErrors(f, {});
    status.clear();
    showSource();
  });
  showSource();
  onValidSubmit({
    form,
    fields: f,
    submit,
    status,
    advanced: options,
    build: buildDownloadRequest,
    async send(body) {
      const answer = await controller.api.addDownloads(body);
      const jobs = (answer && answer.jobs) || [];
      for (const job of jobs) controller.store.dispatch({ type: "download", job });
      status.ok(`Queued ${jobs.length} download${jobs.length === 1 ? "" : "s"}.`);
      for (const name of ["repo_id", "filename", "revision", "civitai", "url", "uri", "manifest", "name", "sha256"])
        f[name].input.value = "";
    },
  });
  return form;
}

function downloadRow(controller, onError) {
  const name = h("span", { class: "podkit-row-name" });
  const pill = statusPill("queued");
  const pause = h("button", { type: "button", class: "podkit-small" });
  const button = h("button", { type: "button", class: "podkit-small" });
  const bar = progressBar("Download progress");
  const line = h("div", { class: "podkit-row-meta" });
  const err = h("div", { class: "podkit-row-error" });
  const el = h(
    "li",
    { class: "podkit-row" },
    h("div", { class: "podkit-row-head" }, name, pill, pause, button),
    bar.el,
    line,
    err,
  );
  let job = null;
  const apply = (answer) => {
    if (answer && typeof answer.id === "string") controller.store.dispatch({ type: "download", job: answer });
  };
  button.addEventListener("click", () =>
    busy(
      button,
      async () => {
        const open = DOWNLOAD_OPEN.has(job.status);
        const answer = await controller.api.deleteDownload(job.id);
        if (open) apply(answer);
        else controller.store.dispatch({ type: "download/removed", id: job.id });
      },
      onError,
    ),
  );
  pause.addEventListener("click", () =>
    busy(
      pause,
      async () =>
        apply(
          job.status === "paused"
            ? await controller.api.resumeDownload(job.id)
            : await controller.api.pauseDownload(job.id),
        ),
      onError,
    ),
  );
  return {
    el,
    update(next) {
      job = next;
      const label = next.name || next.dest || next.id;
      const active = DOWNLOAD_OPEN.has(next.status);
      const paused = next.status === "paused";
      pause.hidden = !(paused || next.status === "queued" || next.status === "running");
      setText(pause, paused ? "Resume" : "Pause");
      pause.setAttribute("aria-label", `${paused ? "Resume" : "Pause"} download ${label}`);
      el.dataset.status = next.status;
      el.dataset.id = next.id;
      setText(name, label);
      name.title = next.dest || label;
      setPill(pill, next.status);
      setText(button, active ? "Cancel" : "Remove");
      button.setAttribute("aria-label", `${active ? "Cancel" : "Remove"} download ${label}`);
      bar.el.hidden = !active && next.status !== "done";
      const f = next.status === "done" ? 1 : fraction(next.bytes_done, next.bytes_total);
      const text = downloadProgressText(next);
      bar.set(f, text);
      bar.el.setAttribute("aria-label", `Download progress of ${label}`);
      const where = next.dest && next.status === "done" ? `→ ${next.dest}` : "";
      const files = Array.isArray(next.files) && next.files.length > 1 ? `${next.files.length} files` : "";
      const when = active ? "" : formatAgo(next.finished ?? next.updated, Date.now() / 1000);
      setText(line, [text, files, next.model_type, where, when].filter(Boolean).join(" · "));
      setErrorText(err, next.error);
    },
  };
}

export function downloadsSection(controller) {
  const frame = sectionFrame("downloads", "Downloads");
  const status = statusLine();
  const loadError = statusLine();
  const activeList = h("ul", { class: "podkit-list", "aria-label": "Active downloads" });
  const historyList = h("ul", { class: "podkit-list", "aria-label": "Download history" });
  const activeEmpty = h("p", { class: "podkit-empty" }, "Nothing downloading.");
  const historyTitle = h("h4", {}, "History");
  const rows = { active: new Map(), history: new Map() };
  const onError = (e) => status.fail(errorText(e));
  frame.body.append(
    loadError.el,
    downloadForm(controller),
    h("h4", {}, "Active"),
    activeEmpty,
    activeList,
    historyTitle,
    historyList,
    status.el,
  );

  return {
    el: frame.el,
    update(state) {
      if (!frame.setAvailable(state.downloads.error)) return;
      const { active, history } = downloadGroups(state);
      syncList(
        activeList,
        rows.active,
        active,
        (j) => j.id,
        () => downloadRow(controller, onError),
      );
      syncList(
        historyList,
        rows.history,
        history.slice(0, 50),
        (j) => j.id,
        () => downloadRow(controller, onError),
      );
      activeEmpty.hidden = active.length > 0;
      historyTitle.hidden = historyList.hidden = history.length === 0;
      const working = active.filter((j) => j.status !== "paused").length;
      frame.setBadge(working ? `${working} active` : active.length ? `${active.length} paused` : "");
      if (state.downloads.error) loadError.fail(`Downloads: ${state.downloads.error}`);
      else loadError.clear();
    },
  };
}
