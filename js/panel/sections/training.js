// Training: the launch form (with a message per invalid field), the job list with progress, loss,
// speed and ETA, cancel/remove, and per job a details view with the loss chart and the log tail.

import { lossChart } from "../charts.js";
import { formatAgo, fraction, trainingProgressText } from "../format.js";
import { TRAINING_ACTIVE, trainingGroups } from "../state.js";
import { BASE_MODELS, CAPTION_EXTS, OPTIMIZERS, buildTrainingRequest } from "../validate.js";
import { busy, field, h, progressBar, setErrorText, setPill, setText, statusPill, syncList } from "../dom.js";
import { errorText, onValidSubmit, sectionFrame, statusLine } from "./common.js";

function trainingForm(controller) {
  const f = {
    name: field({ label: "LoRA name", name: "name", attrs: { placeholder: "my_style_v1", required: true } }),
    dataset_kind: field({
      label: "Dataset from",
      name: "dataset_kind",
      control: "select",
      options: [
        ["url", "URL of an archive"],
        ["uri", "Bucket (r2://…)"],
        ["path", "Folder on this pod"],
      ],
    }),
    dataset: field({
      label: "Dataset location",
      name: "dataset",
      hint: "Images with same-named .txt captions.",
      attrs: { required: true },
    }),
    base_model: field({
      label: "Base model",
      name: "base_model",
      control: "select",
      options: [...BASE_MODELS.map((m) => [m, m]), ["custom", "custom path…"]],
    }),
    base_model_path: field({
      label: "Base model path",
      name: "base_model_path",
      attrs: { placeholder: "/workspace/models/base" },
    }),
    arch: field({
      label: "Architecture of the custom model",
      name: "arch",
      control: "select",
      options: [
        ["flux", "flux"],
        ["sdxl", "sdxl"],
        ["sd15", "sd15"],
      ],
    }),
    steps: field({
      label: "Steps",
      name: "steps",
      type: "number",
      attrs: { min: 1, max: 100000, placeholder: "2000" },
    }),
    trigger_word: field({ label: "Trigger word", name: "trigger_word", attrs: { placeholder: "optional" } }),
  };
  const adv = {
    learning_rate: field({
      label: "Learning rate",
      name: "learning_rate",
      attrs: { placeholder: "1e-4", inputmode: "decimal" },
    }),
    rank: field({ label: "Rank", name: "rank", type: "number", attrs: { min: 1, max: 256, placeholder: "16" } }),
    alpha: field({ label: "Alpha", name: "alpha", type: "number", attrs: { min: 1, max: 256, placeholder: "= rank" } }),
    resolutions: field({ label: "Resolutions", name: "resolutions", attrs: { placeholder: "512, 768, 1024" } }),
    batch_size: field({
      label: "Batch size",
      name: "batch_size",
      type: "number",
      attrs: { min: 1, max: 64, placeholder: "1" },
    }),
    caption_ext: field({
      label: "Caption extension",
      name: "caption_ext",
      control: "select",
      options: CAPTION_EXTS.map((x) => [x, x]),
    }),
    optimizer: field({
      label: "Optimizer",
      name: "optimizer",
      control: "select",
      options: OPTIMIZERS.map((x) => [x, x]),
    }),
    sample_prompts: field({
      label: "Sample prompts (one per line)",
      name: "sample_prompts",
      control: "textarea",
      attrs: { rows: 3 },
    }),
    sample_every: field({
      label: "Sample every (steps, 0 = never)",
      name: "sample_every",
      type: "number",
      attrs: { min: 0, placeholder: "250" },
    }),
    save_every: field({
      label: "Save every (steps)",
      name: "save_every",
      type: "number",
      attrs: { min: 1, placeholder: "250" },
    }),
    upload_intermediate: field({
      label: "Upload intermediate checkpoints",
      name: "upload_intermediate",
      type: "checkbox",
    }),
  };
  const all = { ...f, ...adv };
  const submit = h("button", { type: "submit", class: "podkit-primary" }, "Start training");
  const status = statusLine();
  const advanced = h(
    "details",
    { class: "podkit-advanced" },
    h("summary", {}, "Advanced settings"),
    Object.values(adv).map((x) => x.wrap),
  );
  const form = h(
    "form",
    { class: "podkit-form", "aria-label": "Launch a training", novalidate: true },
    Object.values(f).map((x) => x.wrap),
    advanced,
    h("div", { class: "podkit-actions" }, submit),
    status.el,
  );
  const showCustom = () => {
    const custom = f.base_model.input.value === "custom";
    f.base_model_path.wrap.hidden = !custom;
    f.arch.wrap.hidden = !custom;
  };
  f.base_model.input.addEventListener("change", showCustom);
  showCustom();
  onValidSubmit({
    form,
    fields: all,
    submit,
    status,
    advanced,
    build(values) {
      if (values.base_model !== "custom") delete values.arch;
      return buildTrainingRequest(values);
    },
    async send(body) {
      const answer = await controller.api.launchTraining(body);
      const job = answer && (answer.job || answer);
      if (job && typeof job.id === "string") controller.store.dispatch({ type: "training", job });
      status.ok(`Training ${body.name} queued.`);
    },
  });
  return form;
}

function trainingRow(controller, onError, detailOf) {
  const name = h("span", { class: "podkit-row-name" });
  const pill = statusPill("queued");
  const details = h("button", { type: "button", class: "podkit-small", "aria-expanded": "false" }, "Details");
  const action = h("button", { type: "button", class: "podkit-small" });
  const bar = progressBar("Training progress");
  const line = h("div", { class: "podkit-row-meta" });
  const extra = h("div", { class: "podkit-row-meta" });
  const err = h("div", { class: "podkit-row-error" });
  const chart = h("div", { class: "podkit-chart-wrap" });
  const log = h("pre", { class: "podkit-log", tabindex: "0", "aria-label": "Log tail" });
  const panel = h("div", { class: "podkit-job-details", hidden: true }, chart, log);
  const el = h(
    "li",
    { class: "podkit-row" },
    h("div", { class: "podkit-row-head" }, name, pill, details, action),
    bar.el,
    line,
    extra,
    err,
    panel,
  );
  panel.id = `podkit-training-details-${Math.random().toString(36).slice(2, 10)}`;
  details.setAttribute("aria-controls", panel.id);
  let job = null;
  let shownDetail = null;
  let detailTimer = null;

  const fetchDetail = async () => {
    try {
      // applied like an event, so a job this answer shows finished is toasted (and followed up) once
      controller.onEvent("podkit.training", await controller.api.training(job.id));
    } catch (e) {
      onError(e);
    }
  };
  details.addEventListener("click", () => {
    const open = panel.hidden;
    panel.hidden = !open;
    details.setAttribute("aria-expanded", String(open));
    setText(details, open ? "Hide" : "Details");
    if (open) fetchDetail();
  });
  action.addEventListener("click", () =>
    busy(
      action,
      async () => {
        if (TRAINING_ACTIVE.has(job.status)) {
          const answer = await controller.api.cancelTraining(job.id);
          controller.store.dispatch({ type: "training", job: (answer && answer.job) || answer });
        } else {
          await controller.api.deleteTraining(job.id);
          controller.store.dispatch({ type: "training/removed", id: job.id });
        }
      },
      onError,
    ),
  );

  return {
    el,
    update(next) {
      const detail = detailOf(next.id);
      const changed = job && next.updated !== job.updated;
      job = next;
      const active = TRAINING_ACTIVE.has(next.status);
      el.dataset.status = next.status;
      el.dataset.id = next.id;
      setText(name, next.name || next.id);
      setPill(pill, next.status);
      setText(action, active ? "Cancel" : "Remove");
      action.setAttribute("aria-label", `${active ? "Cancel" : "Remove"} training ${next.name}`);
      details.setAttribute("aria-label", `Details of training ${next.name}`);
      const f = next.status === "done" ? 1 : fraction(next.step, next.total_steps);
      const text = trainingProgressText(next);
      bar.set(next.status === "queued" || next.status === "preparing" ? null : f, text || next.status);
      bar.el.setAttribute("aria-label", `Training progress of ${next.name}`);
      bar.el.hidden = !active && next.status !== "done";
      setText(line, text);
      const ds = next.dataset;
      const bits = [];
      if (ds && Number.isFinite(ds.images))
        bits.push(`${ds.images} images${ds.missing_captions ? `, ${ds.missing_captions} without caption` : ""}`);
      if (next.lora_uri) bits.push(`→ ${next.lora_uri}`);
      if (!active && next.finished) bits.push(formatAgo(next.finished, Date.now() / 1000));
      setText(extra, bits.join(" · "));
      setErrorText(err, next.error);
      if (!panel.hidden && detail && detail !== shownDetail) {
        shownDetail = detail;
        chart.replaceChildren(lossChart(document, detail.loss || [], { label: `Loss of ${next.name}` }));
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = (detail.log_tail || []).join("\n") || "(no log yet)";
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      // while the details are open, follow the job: re-read loss and log after its events settle
      if (!panel.hidden && changed && active) {
        clearTimeout(detailTimer);
        detailTimer = setTimeout(fetchDetail, 1000);
      }
    },
  };
}

export function trainingSection(controller) {
  const frame = sectionFrame("training", "Training");
  const status = statusLine();
  const loadError = statusLine();
  const list = h("ul", { class: "podkit-list", "aria-label": "Training jobs" });
  const empty = h("p", { class: "podkit-empty" }, "No training jobs yet.");
  const rows = new Map();
  const onError = (e) => status.fail(errorText(e));
  let latest = controller.store.get();
  const detailOf = (id) => latest.training.detail[id];
  frame.body.append(
    loadError.el,
    h("details", { class: "podkit-launch" }, h("summary", {}, "Launch a training"), trainingForm(controller)),
    h("h4", {}, "Jobs"),
    empty,
    list,
    status.el,
  );
  return {
    el: frame.el,
    update(state) {
      if (!frame.setAvailable(state.training.error)) return;
      const { active, finished } = trainingGroups(state);
      const jobs = [...active, ...finished.slice(0, 30)];
      latest = state;
      syncList(
        list,
        rows,
        jobs,
        (j) => j.id,
        () => trainingRow(controller, onError, detailOf),
      );
      empty.hidden = jobs.length > 0;
      frame.setBadge(active.length ? `${active.length} active` : "");
      if (state.training.error) loadError.fail(`Training: ${state.training.error}`);
      else loadError.clear();
    },
  };
}
