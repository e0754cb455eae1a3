// The Compare view: one prompt to two models at once, answers side by side with their speeds.

import { speedLine, streamChat } from "./api.js";
import { answerText, settings, systemMessages } from "./chat.js";
import { renderInto } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let controller = null;

async function answerOn(side, prompt, options, signal) {
  const model = $(`compare-${side}`).value;
  const body = $(`compare-${side}-answer`);
  const stats = $(`compare-${side}-stats`);
  $(`compare-${side}-name`).textContent = model;
  body.replaceChildren();
  stats.textContent = "waiting…";
  stats.classList.remove("error");
  let answer = null;
  const messages = [...systemMessages(), { role: "user", content: prompt }];
  try {
    await streamChat({ model, messages, ...options }, signal, (partial) => {
      answer = partial;
      renderInto(body, answerText(partial));
      stats.textContent = speedLine(partial);
    }, (seconds) => (stats.textContent = `${model} is loading; retrying in ${seconds} s…`));
  } catch (error) {
    if (error.name === "AbortError") stats.textContent = `${answer ? speedLine(answer) + " · " : ""}stopped`;
    else {
      stats.textContent = `Error: ${error.message}`;
      stats.classList.add("error");
    }
  }
}

async function compare(prompt) {
  if (!prompt.trim() || controller) return;
  let options;
  try {
    options = settings();
  } catch (error) {
    $("settings-error").textContent = error.message;
    return;
  }
  controller = new AbortController();
  $("compare-send").disabled = true;
  $("compare-stop").disabled = false;
  await Promise.all(["left", "right"].map((side) => answerOn(side, prompt, options, controller.signal)));
  controller = null;
  document.dispatchEvent(new Event("models-changed")); // a model may have loaded for it
  $("compare-send").disabled = false;
  $("compare-stop").disabled = true;
}

export function setupCompare() {
  $("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    compare($("compare-input").value);
  });
  $("compare-stop").addEventListener("click", () => controller?.abort());
}
