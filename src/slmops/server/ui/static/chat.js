// The Chat view: a multi-turn conversation streamed from /v1/chat/completions.

import { speedLine, streamChat } from "./api.js";
import { button, el, status } from "./dom.js";
import { renderInto } from "./markdown.js";

const history = []; // {role, content} as sent to the API, without the system prompt
let controller = null;

const $ = (id) => document.getElementById(id);

function number(id, parse = Number) {
  const text = $(id).value.trim();
  return text === "" ? undefined : parse(text);
}

function json(id, what) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}

// The request fields the Settings panel sets; throws with a message for the panel.
export function settings() {
  const stop = $("set-stop").value.split("\n").filter((line) => line !== "");
  const schema = json("set-schema", "The JSON schema");
  const tools = json("set-tools", "Tools");
  if (tools !== undefined && !Array.isArray(tools)) throw new Error("Tools must be a JSON list.");
  return {
    temperature: number("set-temperature"),
    top_p: number("set-top-p"),
    top_k: number("set-top-k", (text) => parseInt(text, 10)),
    max_tokens: number("set-max-tokens", (text) => parseInt(text, 10)),
    seed: number("set-seed", (text) => parseInt(text, 10)),
    stop: stop.length ? stop : undefined,
    response_format: schema ? { type: "json_schema", json_schema: { name: "answer", schema } } : undefined,
    tools,
    tool_choice: tools ? $("set-tool-choice").value : undefined,
  };
}

export function systemMessages() {
  const system = $("set-system").value.trim();
  return system ? [{ role: "system", content: system }] : [];
}

// The text an answer shows: its words, then any tool calls as JSON.
export function answerText(answer) {
  const calls = answer.toolCalls.filter(Boolean).map((call) => `${call.name}(${call.arguments})`);
  return calls.length ? `${answer.text}${answer.text ? "\n\n" : ""}\`\`\`tool_calls\n${calls.join("\n")}\n\`\`\`` : answer.text;
}

function setBusy(busy) {
  $("chat-send").disabled = busy;
  $("chat-stop").disabled = !busy;
}

function renderHistory() {
  $("messages").replaceChildren(...history.map((message, index) => messageNode(message, index)));
}

function messageNode(message, index) {
  const node = el("div", `message ${message.role}`);
  node.append(el("div", "role", message.role === "user" ? "You" : "Model"));
  const body = el("div", "body");
  if (message.role === "user") body.textContent = message.content;
  else renderInto(body, message.content);
  node.append(body);
  if (message.role === "user") node.append(button("Edit", () => edit(node, index)));
  if (message.stats) node.append(el("div", "stats", message.stats));
  return node;
}

// Edit a question in place; resending drops everything after it.
function edit(node, index) {
  if (controller) return;
  const box = el("textarea", "edit-box");
  box.value = history[index].content;
  const resend = button("Resend", () => {
    history.splice(index);
    renderHistory();
    ask(box.value);
  });
  const cancel = button("Cancel", renderHistory);
  node.querySelector(".body").replaceChildren(box, el("div", "edit-buttons"));
  node.querySelector(".edit-buttons").append(resend, cancel);
  box.focus();
}

async function ask(text) {
  if (!text.trim() || controller) return;
  let options;
  try {
    options = settings();
    $("settings-error").textContent = "";
  } catch (error) {
    $("settings-error").textContent = error.message;
    return;
  }
  history.push({ role: "user", content: text });
  const reply = { role: "assistant", content: "", stats: "" };
  renderHistory();
  const node = messageNode(reply, history.length);
  $("messages").append(node);
  const body = node.querySelector(".body");
  const stats = node.appendChild(el("div", "stats"));
  controller = new AbortController();
  setBusy(true);
  const request = { model: $("chat-model").value, messages: [...systemMessages(), ...history], ...options };
  let answer = null;
  try {
    answer = await streamChat(request, controller.signal, (partial) => {
      answer = partial;
      renderInto(body, answerText(partial));
      stats.textContent = speedLine(partial);
      node.scrollIntoView({ block: "end" });
    }, (seconds) => (stats.textContent = `The model is loading; retrying in ${seconds} s…`));
    status("");
  } catch (error) {
    if (error.name === "AbortError") stats.textContent = `${answer ? speedLine(answer) + " · " : ""}stopped`;
    else {
      stats.textContent = `Error: ${error.message}`;
      stats.classList.add("error");
    }
  } finally {
    controller = null;
    setBusy(false);
    document.dispatchEvent(new Event("models-changed")); // the model may have loaded for it
  }
  reply.content = answer ? answerText(answer) : "";
  reply.stats = stats.textContent;
  history.push(reply);
}

export function setupChat() {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value;
    $("chat-input").value = "";
    ask(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => controller?.abort());
  $("chat-clear").addEventListener("click", () => {
    if (controller) return;
    history.length = 0;
    renderHistory();
  });
}
