// PodKit's frontend entry: the API token setting and the bearer token on PodKit's own requests
// (notifications come from the panel, js/podkit_panel.js). Plain ES module, no build step
// (ComfyUI imports every .js under js/).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TOKEN_SETTING = "PodKit.ApiToken";

function token() {
  try {
    return app.extensionManager?.setting?.get(TOKEN_SETTING) || "";
  } catch {
    return "";
  }
}

// Send the PodKit token with PodKit's own requests only (remote combos, the panel).
const originalFetchApi = api.fetchApi.bind(api);
api.fetchApi = (route, options = {}) => {
  const path = typeof route === "string" ? route : "";
  const tok = token();
  if (tok && path.startsWith("/podkit/")) {
    const headers = new Headers(options.headers || {});
    if (!headers.has("Authorization")) headers.set("Authorization", `Bearer ${tok}`);
    options = { ...options, headers };
  }
  return originalFetchApi(route, options);
};

app.registerExtension({
  name: "podkit.core",
  settings: [
    {
      id: TOKEN_SETTING,
      name: "API token for protected PodKit routes (PODKIT_API_TOKEN)",
      type: "text",
      defaultValue: "",
      tooltip: "Sent as 'Authorization: Bearer …' with PodKit requests when the server sets PODKIT_API_TOKEN.",
    },
  ],
});
