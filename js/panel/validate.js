// Form values → request bodies for PodKit's routes, with a message per invalid field. Pure (no
// DOM): the panel reads its inputs into a plain object, calls these, and shows `errors[field]`
// beside the input. The server validates again and its message is shown when it disagrees.
// Unit-tested by tests/js/validate.test.mjs.

export const MODEL_TYPES = [
  "lora",
  "checkpoint",
  "vae",
  "text_encoder",
  "diffusion_model",
  "controlnet",
  "upscale_model",
  "clip_vision",
  "embedding",
];
export const BASE_MODELS = ["flux-dev", "sdxl", "sd15"];
export const OPTIMIZERS = ["adamw8bit", "adamw", "adam8bit", "adafactor", "prodigy", "lion8bit"];
export const CAPTION_EXTS = ["txt", "caption"];

const HF_REPO = /^[A-Za-z0-9][\w.-]{0,95}\/[\w.-]{1,96}$/;
const SHA256 = /^[0-9a-fA-F]{64}$/;
const BUCKET_URI = /^(r2|s3):\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/\S.*$/;
// as core/training.py NAME_RE: it names the LoRA file
const JOB_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9_]$|^[A-Za-z0-9]$/;

const trim = (v) => (typeof v === "string" ? v.trim() : v);

function isHttpUrl(text) {
  try {
    const u = new URL(text);
    return (u.protocol === "http:" || u.protocol === "https:") && !!u.hostname;
  } catch {
    return false;
  }
}

function safeFileName(name) {
  return !/[\\/]/.test(name) && name !== "." && name !== ".." && !name.startsWith(".") && name.length <= 200;
}

/**
 * A Hugging Face file URL (".../owner/repo/resolve/<rev>/<path>" or "/blob/") as
 * {repo_id, revision, filename}, or null.
 */
export function parseHfUrl(text) {
  let u;
  try {
    u = new URL(text);
  } catch {
    return null;
  }
  if (!/(^|\.)huggingface\.co$/.test(u.hostname)) return null;
  const parts = u.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const at = parts.findIndex((p) => p === "resolve" || p === "blob");
  if (at !== 2 || parts.length < 5) return null;
  return { repo_id: `${parts[0]}/${parts[1]}`, revision: parts[3], filename: parts.slice(4).join("/") };
}

/**
 * Download form → `{body}` for POST /podkit/downloads, or `{errors: {field: message}}`.
 *
 * form: {source: "hf"|"civitai"|"url"|"bucket"|"manifest", repo_id, filename, revision, civitai,
 * url, uri, manifest, type, name, sha256, force}.
 */
export function buildDownloadRequest(form) {
  const errors = {};
  const item = {};
  const source = form.source || "hf";
  if (source === "manifest") {
    const text = String(form.manifest || "");
    if (!text.trim()) errors.manifest = "Paste a manifest (YAML or JSON).";
    else if (text.length > 200_000) errors.manifest = "The manifest is too long (200 kB at most).";
    if (Object.keys(errors).length) return { errors };
    const body = { manifest: text };
    if (form.force) body.force = true;
    return { body };
  }
  if (source === "hf") {
    const repo = trim(form.repo_id) || "";
    const fromUrl = parseHfUrl(repo);
    if (fromUrl) Object.assign(item, { source: "hf", ...fromUrl });
    else if (!repo) errors.repo_id = "Enter a repository, e.g. black-forest-labs/FLUX.1-dev.";
    else if (!HF_REPO.test(repo)) errors.repo_id = "Use owner/name, or paste a huggingface.co file URL.";
    else {
      item.source = "hf";
      item.repo_id = repo;
      const filename = trim(form.filename);
      const revision = trim(form.revision);
      if (filename) {
        if (filename.includes("..") || filename.startsWith("/"))
          errors.filename = "A path inside the repository, without '..'.";
        else item.filename = filename;
      }
      if (revision) item.revision = revision;
    }
  } else if (source === "civitai") {
    const ref = trim(form.civitai) || "";
    if (/^\d{1,12}$/.test(ref)) item.version_id = Number(ref);
    else if (isHttpUrl(ref) && /(^|\.)civitai\.com$/.test(new URL(ref).hostname)) item.url = ref;
    else errors.civitai = "Enter a model version id (digits) or a civitai.com URL.";
    item.source = "civitai";
  } else if (source === "url") {
    const url = trim(form.url) || "";
    if (!isHttpUrl(url)) errors.url = "Enter an http:// or https:// URL.";
    else Object.assign(item, { source: "url", url });
  } else if (source === "bucket") {
    const uri = trim(form.uri) || "";
    if (!BUCKET_URI.test(uri)) errors.uri = "Enter r2://bucket/key (or s3://bucket/key).";
    else Object.assign(item, { source: "bucket", uri });
  } else {
    errors.source = "Choose where to download from.";
  }

  const type = trim(form.type);
  if (type) {
    if (!MODEL_TYPES.includes(type)) errors.type = "Unknown model type.";
    else item.type = type;
  }
  const name = trim(form.name);
  if (name) {
    if (!safeFileName(name)) errors.name = "A file name only (no folders, not starting with a dot).";
    else item.name = name;
  }
  const sha = trim(form.sha256);
  if (sha) {
    if (!SHA256.test(sha)) errors.sha256 = "64 hexadecimal characters.";
    else item.sha256 = sha.toLowerCase();
  }
  if (Object.keys(errors).length) return { errors };
  const body = { items: [item] };
  if (form.force) body.force = true;
  return { body };
}

function intField(form, errors, key, lo, hi, label) {
  const raw = trim(form[key]);
  if (raw === undefined || raw === null || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    errors[key] = `${label} must be a whole number from ${lo} to ${hi}.`;
    return undefined;
  }
  return n;
}

/**
 * Training form → `{body}` for POST /podkit/training/jobs, or `{errors: {field: message}}`.
 * Empty optional fields are left out so the server's defaults apply.
 */
export function buildTrainingRequest(form) {
  const errors = {};
  const body = {};
  const name = trim(form.name) || "";
  if (!name) errors.name = "Give the LoRA a name.";
  else if (!JOB_NAME.test(name) || /\.safetensors$/i.test(name))
    errors.name = "1-64 letters, digits, '_', '-' or '.', no extension; it names the LoRA file.";
  else body.name = name;

  const kind = form.dataset_kind || "url";
  const where = trim(form.dataset) || "";
  if (!where) errors.dataset = "Where are the training images?";
  else if (kind === "url" && !isHttpUrl(where)) errors.dataset = "Enter an http(s) URL of a .zip or .tar archive.";
  else if (kind === "uri" && !BUCKET_URI.test(where)) errors.dataset = "Enter r2://bucket/prefix-or-archive.";
  else if (kind === "path" && !where.startsWith("/")) errors.dataset = "Enter an absolute folder path on this pod.";
  else if (!["url", "uri", "path"].includes(kind)) errors.dataset = "Choose URL, bucket or folder.";
  else body.dataset = { [kind]: where };

  const base = trim(form.base_model) || "flux-dev";
  if (base === "custom") {
    const path = trim(form.base_model_path) || "";
    if (!path.startsWith("/")) errors.base_model_path = "Enter the absolute path of the base model on this pod.";
    else {
      body.base_model = path;
      const arch = trim(form.arch);
      if (arch) body.arch = arch;
    }
  } else if (BASE_MODELS.includes(base)) body.base_model = base;
  else errors.base_model = "Unknown base model.";

  const ints = [
    ["steps", 1, 100000, "Steps"],
    ["rank", 1, 256, "Rank"],
    ["batch_size", 1, 64, "Batch size"],
    ["sample_every", 0, 100000, "Sample every"],
    ["save_every", 1, 100000, "Save every"],
    ["alpha", 1, 256, "Alpha"],
  ];
  for (const [key, lo, hi, label] of ints) {
    const v = intField(form, errors, key, lo, hi, label);
    if (v !== undefined) body[key] = v;
  }
  const lr = trim(form.learning_rate);
  if (lr !== undefined && lr !== "") {
    const x = Number(lr);
    if (!Number.isFinite(x) || x <= 0 || x >= 1)
      errors.learning_rate = "Learning rate must be a number between 0 and 1, e.g. 1e-4.";
    else body.learning_rate = x;
  }
  const res = trim(form.resolutions);
  if (res) {
    const list = res
      .split(/[\s,]+/)
      .filter(Boolean)
      .map(Number);
    if (
      !list.length ||
      list.length > 8 ||
      list.some((r) => !Number.isInteger(r) || r < 256 || r > 4096 || r % 32 !== 0)
    )
      errors.resolutions = "1 to 8 sizes from 256 to 4096, multiples of 32, separated by commas.";
    else body.resolutions = [...new Set(list)];
  }
  const trigger = trim(form.trigger_word);
  if (trigger) {
    if (trigger.length > 64) errors.trigger_word = "64 characters at most.";
    else body.trigger_word = trigger;
  }
  const captionExt = trim(form.caption_ext);
  if (captionExt) {
    if (!CAPTION_EXTS.includes(captionExt)) errors.caption_ext = `One of ${CAPTION_EXTS.join(", ")}.`;
    else body.caption_ext = captionExt;
  }
  const prompts = String(form.sample_prompts || "")
    .split("\n")
    .map((s) => s.trim())
    .filter(Boolean);
  if (prompts.length > 20) errors.sample_prompts = "20 prompts at most.";
  else if (prompts.length) body.sample_prompts = prompts;
  const optimizer = trim(form.optimizer);
  if (optimizer) {
    if (!OPTIMIZERS.includes(optimizer)) errors.optimizer = "Unknown optimizer.";
    else body.optimizer = optimizer;
  }
  if (form.upload_intermediate) body.upload_intermediate = true;
  if (Object.keys(errors).length) return { errors };
  return { body };
}
