// node --test: form values → request bodies (js/panel/validate.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { buildDownloadRequest, buildTrainingRequest, parseHfUrl } from "../../js/panel/validate.js";

test("Hugging Face: repo + file, or a pasted file URL", () => {
  assert.deepEqual(
    buildDownloadRequest({ source: "hf", repo_id: " owner/repo ", filename: "sub/m.safetensors", revision: "main" }),
    {
      body: { items: [{ source: "hf", repo_id: "owner/repo", filename: "sub/m.safetensors", revision: "main" }] },
    },
  );
  assert.deepEqual(
    buildDownloadRequest({ source: "hf", repo_id: "https://huggingface.co/o/r/resolve/v1/a%20b/c.safetensors" }).body
      .items[0],
    {
      source: "hf",
      repo_id: "o/r",
      revision: "v1",
      filename: "a b/c.safetensors",
    },
  );
  assert.ok(buildDownloadRequest({ source: "hf", repo_id: "" }).errors.repo_id);
  assert.ok(buildDownloadRequest({ source: "hf", repo_id: "no-slash" }).errors.repo_id);
  assert.ok(buildDownloadRequest({ source: "hf", repo_id: "o/r", filename: "../x" }).errors.filename);
  assert.equal(parseHfUrl("https://example.com/o/r/resolve/main/x"), null);
});

test("CivitAI: a version id or a civitai.com URL", () => {
  assert.deepEqual(buildDownloadRequest({ source: "civitai", civitai: "12345" }).body.items[0], {
    source: "civitai",
    version_id: 12345,
  });
  assert.equal(
    buildDownloadRequest({ source: "civitai", civitai: "https://civitai.com/models/1?modelVersionId=2" }).body.items[0]
      .url,
    "https://civitai.com/models/1?modelVersionId=2",
  );
  assert.ok(buildDownloadRequest({ source: "civitai", civitai: "https://evil.example/models/1" }).errors.civitai);
});

test("URL, bucket and per-item options", () => {
  assert.deepEqual(
    buildDownloadRequest({
      source: "url",
      url: "http://127.0.0.1:8000/m.safetensors",
      type: "lora",
      name: "m.safetensors",
      sha256: "A".repeat(64),
      force: true,
    }),
    {
      body: {
        items: [
          {
            source: "url",
            url: "http://127.0.0.1:8000/m.safetensors",
            type: "lora",
            name: "m.safetensors",
            sha256: "a".repeat(64),
          },
        ],
        force: true,
      },
    },
  );
  const bad = buildDownloadRequest({
    source: "url",
    url: "ftp://x/y",
    type: "weird",
    name: "../x",
    sha256: "xyz",
  }).errors;
  assert.deepEqual(Object.keys(bad).sort(), ["name", "sha256", "type", "url"]);
  assert.deepEqual(buildDownloadRequest({ source: "bucket", uri: "r2://loras/a/b.safetensors" }).body.items[0], {
    source: "bucket",
    uri: "r2://loras/a/b.safetensors",
  });
  assert.ok(buildDownloadRequest({ source: "bucket", uri: "loras/a" }).errors.uri);
  assert.ok(buildDownloadRequest({ source: "tape" }).errors.source);
});

test("a pasted manifest goes through as text", () => {
  assert.deepEqual(buildDownloadRequest({ source: "manifest", manifest: "loras:\n  - url: http://x/y\n" }), {
    body: { manifest: "loras:\n  - url: http://x/y\n" },
  });
  assert.ok(buildDownloadRequest({ source: "manifest", manifest: "  " }).errors.manifest);
  assert.ok(buildDownloadRequest({ source: "manifest", manifest: "x".repeat(200_001) }).errors.manifest);
});

test("training: minimal form, server defaults for the rest", () => {
  assert.deepEqual(
    buildTrainingRequest({
      name: "style_v1",
      dataset_kind: "url",
      dataset: "http://127.0.0.1/ds.zip",
      base_model: "sdxl",
    }),
    {
      body: { name: "style_v1", dataset: { url: "http://127.0.0.1/ds.zip" }, base_model: "sdxl" },
    },
  );
});

test("training: every option, typed", () => {
  const { body } = buildTrainingRequest({
    name: "s",
    dataset_kind: "uri",
    dataset: "r2://datasets/s/",
    base_model: "custom",
    base_model_path: "/models/base.safetensors",
    arch: "sd15",
    steps: "300",
    learning_rate: "1e-4",
    rank: "8",
    alpha: "4",
    resolutions: "512, 768 512",
    batch_size: "2",
    caption_ext: "caption",
    optimizer: "adamw",
    sample_prompts: "a cat\n\n a dog \n",
    sample_every: "0",
    save_every: "100",
    trigger_word: "sks",
    upload_intermediate: true,
  });
  assert.deepEqual(body, {
    name: "s",
    dataset: { uri: "r2://datasets/s/" },
    base_model: "/models/base.safetensors",
    arch: "sd15",
    steps: 300,
    rank: 8,
    batch_size: 2,
    sample_every: 0,
    save_every: 100,
    alpha: 4,
    learning_rate: 1e-4,
    resolutions: [512, 768],
    trigger_word: "sks",
    caption_ext: "caption",
    sample_prompts: ["a cat", "a dog"],
    optimizer: "adamw",
    upload_intermediate: true,
  });
});

test("training: a message per invalid field", () => {
  const { errors } = buildTrainingRequest({
    name: "bad name.safetensors",
    dataset_kind: "path",
    dataset: "relative/dir",
    base_model: "custom",
    base_model_path: "rel",
    steps: "1.5",
    learning_rate: "2",
    resolutions: "500",
    caption_ext: "md",
    optimizer: "sgd",
    sample_prompts: Array.from({ length: 21 }, (_, i) => `p${i}`).join("\n"),
  });
  assert.deepEqual(Object.keys(errors).sort(), [
    "base_model_path",
    "caption_ext",
    "dataset",
    "learning_rate",
    "name",
    "optimizer",
    "resolutions",
    "sample_prompts",
    "steps",
  ]);
  assert.match(errors.steps, /whole number from 1 to 100000/);
  assert.ok(buildTrainingRequest({ name: "", dataset: "" }).errors.name);
  assert.ok(buildTrainingRequest({ name: "x", dataset: "" }).errors.dataset);
  assert.ok(
    buildTrainingRequest({ name: "x", dataset_kind: "url", dataset: "http://h/d.zip", base_model: "sd3" }).errors
      .base_model,
  );
});
