// A fake fetch for the panel tests: canned answers per "METHOD /route", every call recorded.

/** A fake fetch: answers from `routes` ("METHOD /path" → [status, body]) and records each call. */
export function fakeFetch(routes) {
  const calls = [];
  const fetchFn = async (route, init) => {
    calls.push({
      route,
      method: init.method,
      headers: init.headers,
      body: init.body === undefined ? undefined : JSON.parse(init.body),
    });
    const hit = routes[`${init.method} ${route}`];
    if (hit instanceof Error) throw hit;
    const [status, body] = hit || [404, { error: "not_found", message: `no route ${route}` }];
    const text = typeof body === "string" ? body : body === undefined ? "" : JSON.stringify(body);
    return new Response(text, { status, headers: { "Content-Type": "application/json" } });
  };
  return { fetchFn, calls };
}
