// PodKit's HTTP client for the panel. Pure: it takes the host's fetch function, so ComfyUI passes
// `api.fetchApi` (which adds ComfyUI's headers and PodKit's bearer token) and the standalone page
// passes `window.fetch` with its own token. Unit-tested with a fake fetch by tests/js/api.test.mjs.

/** An HTTP answer that was not 2xx (or no answer at all: `status` 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/**
 * The error a PodKit JSON error body describes. Accepts both wire shapes
 * (`{"error": {"code", "message"}}` and `{"error": code, "message": text}`).
 */
export function errorFromBody(status, body, text = "") {
  let code = "http_error";
  let message = "";
  if (body && typeof body === "object") {
    const e = body.error;
    if (e && typeof e === "object") {
      code = e.code || code;
      message = e.message || "";
    } else if (typeof e === "string") {
      code = e;
      message = body.message || "";
    }
  }
  if (!message) message = text && text.length < 200 ? text : `HTTP ${status}`;
  if (status === 401) message = `${message} (set the PodKit API token)`;
  return new ApiError(status, code, message);
}

/** Build the client. `fetchFn(route, init)` must resolve to a fetch `Response`. */
export function createApi(fetchFn) {
  async function call(method, route, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (method !== "GET") {
      // Mutations are JSON-only on the server (CSRF guard), DELETE included.
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
    let res;
    try {
      res = await fetchFn(route, init);
    } catch (e) {
      throw new ApiError(0, "network", `cannot reach the PodKit server (${e?.message || e})`);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) throw errorFromBody(res.status, data, text);
    return data;
  }

  const id = (x) => encodeURIComponent(String(x));
  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {}))
      if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
    const s = q.toString();
    return s ? `?${s}` : "";
  };

  return {
    call,
    status: () => call("GET", "/podkit/status"),

    downloads: (params) => call("GET", `/podkit/downloads${query(params)}`),
    addDownloads: (body) => call("POST", "/podkit/downloads", body),
    download: (jobId) => call("GET", `/podkit/downloads/${id(jobId)}`),
    deleteDownload: (jobId) => call("DELETE", `/podkit/downloads/${id(jobId)}`),
    pauseDownload: (jobId) => call("POST", `/podkit/downloads/${id(jobId)}/pause`, {}),
    resumeDownload: (jobId) => call("POST", `/podkit/downloads/${id(jobId)}/resume`, {}),

    trainings: () => call("GET", "/podkit/training/jobs"),
    training: (jobId) => call("GET", `/podkit/training/jobs/${id(jobId)}`),
    launchTraining: (body) => call("POST", "/podkit/training/jobs", body),
    cancelTraining: (jobId) => call("POST", `/podkit/training/jobs/${id(jobId)}/cancel`, {}),
    deleteTraining: (jobId) => call("DELETE", `/podkit/training/jobs/${id(jobId)}`),

    cacheStats: () => call("GET", "/podkit/cache/stats"),
    planEviction: (targetBytes) => call("POST", "/podkit/cache/evict", { dry_run: true, target_bytes: targetBytes }),
    evict: (targetBytes) => call("POST", "/podkit/cache/evict", { dry_run: false, target_bytes: targetBytes }),
    loras: () => call("GET", "/podkit/loras"),
    refreshLoras: () => call("POST", "/podkit/loras/refresh", {}),

    metrics: (hours = 24) => call("GET", `/podkit/metrics/report${query({ hours })}`),

    outbox: (params) => call("GET", `/podkit/outbox${query(params)}`),
    retryOutbox: (ids) => call("POST", "/podkit/outbox/retry", ids ? { ids } : {}),

    idle: () => call("GET", "/podkit/idle"),
    keepAlive: () => call("POST", "/podkit/idle/keepalive", {}),
  };
}
