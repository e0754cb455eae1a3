// Talking to the service: the API key, JSON calls, 503 retries and streamed chat answers.

const KEY_ITEM = "slmops-api-key";
const MAX_LOAD_RETRIES = 60;

export class APIError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The key lives in sessionStorage only: it is gone when the tab closes.
function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let keyPrompt = null;

// Ask for the key once, however many requests got a 401 at the same time.
function askForKey() {
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const form = document.getElementById("key-form");
      const input = document.getElementById("key-input");
      const done = (event) => {
        event.preventDefault();
        sessionStorage.setItem(KEY_ITEM, input.value.trim());
        input.value = "";
        form.removeEventListener("submit", done);
        dialog.close();
        keyPrompt = null;
        resolve();
      };
      form.addEventListener("submit", done);
      dialog.showModal();
      input.focus();
    });
  }
  return keyPrompt;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (ignored) {
    // not JSON: the status line says enough
  }
  return new APIError(response.status, message, code);
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    });
  });

// fetch with the key; asks for it on 401 and waits out 503 + Retry-After while a model loads.
export async function call(path, options = {}, onWaiting = () => {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status === 401) {
      await askForKey();
      continue;
    }
    const retryAfter = Number(response.headers.get("Retry-After"));
    if (response.status === 503 && retryAfter > 0 && attempt < MAX_LOAD_RETRIES) {
      onWaiting(retryAfter);
      await sleep(retryAfter * 1000, options.signal);
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJSON(path, options = {}) {
  return (await call(path, options)).json();
}

// Parse the server-sent events of a streamed answer as they arrive.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

// Stream one chat answer. `onUpdate(answer)` is called as text comes; the answer carries
// text, tool calls, finish reason, usage, and the timings TTFT and tokens/s are made of.
export async function streamChat(body, signal, onUpdate, onWaiting) {
  const started = performance.now();
  const answer = { text: "", toolCalls: [], finish: null, usage: null, pieces: 0, firstAt: null, endAt: null, started };
  const request = {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  };
  const response = await call("/v1/chat/completions", request, onWaiting);
  for await (const event of events(response)) {
    if (event.error) throw new APIError(500, event.error.message, event.error.code);
    if (event.usage) answer.usage = event.usage;
    for (const choice of event.choices || []) {
      const delta = choice.delta || {};
      if (delta.content) {
        answer.firstAt ??= performance.now();
        answer.text += delta.content;
        answer.pieces++;
      }
      for (const call of delta.tool_calls || []) {
        answer.firstAt ??= performance.now();
        const slot = (answer.toolCalls[call.index] ??= { name: "", arguments: "" });
        if (call.function?.name) slot.name = call.function.name;
        if (call.function?.arguments) slot.arguments += call.function.arguments;
        answer.pieces++;
      }
      if (choice.finish_reason) answer.finish = choice.finish_reason;
    }
    onUpdate(answer);
  }
  answer.endAt = performance.now();
  onUpdate(answer);
  return answer;
}

// "TTFT 0.21 s · 45.3 tokens/s · 12 in / 80 out · stop". Tokens/s is the decode rate after the
// first token; until the usage comes at the end, each streamed piece counts as one token.
export function speedLine(answer) {
  const parts = [];
  const end = answer.endAt ?? performance.now();
  if (answer.firstAt != null) parts.push(`TTFT ${((answer.firstAt - answer.started) / 1000).toFixed(2)} s`);
  const out = answer.usage?.completion_tokens ?? answer.pieces;
  if (out != null && answer.firstAt != null && out > 1 && end > answer.firstAt) {
    parts.push(`${((out - 1) / ((end - answer.firstAt) / 1000)).toFixed(1)} tokens/s`);
  }
  if (answer.usage) parts.push(`${answer.usage.prompt_tokens} in / ${out} out`);
  if (answer.finish) parts.push(answer.finish);
  return parts.join(" · ");
}
