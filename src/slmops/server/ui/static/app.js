// The page: tabs, the model list beside every view, and the views' start-up.

import { getJSON } from "./api.js";
import { setupChat } from "./chat.js";
import { setupCompare } from "./compare.js";
import { showModelPage } from "./modelpage.js";
import { setupModels, renderModelsTable } from "./models.js";
import { el, status } from "./dom.js";

const SELECTS = ["chat-model", "compare-left", "compare-right", "page-model"];

let models = [];

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  if (name === "model") showModelPage(document.getElementById("page-model").value);
}

// Keep each select's choice when the list is refreshed.
function fillSelect(select, names, fallbackIndex) {
  const previous = select.value;
  select.replaceChildren(...names.map((name) => el("option", null, name)));
  if (names.includes(previous)) select.value = previous;
  else if (names.length) select.value = names[Math.min(fallbackIndex, names.length - 1)];
}

function renderSidebar(models) {
  const list = document.getElementById("model-list");
  list.replaceChildren(
    ...models.map((model) => {
      const item = el("li", `model-item ${model.state}`);
      const name = el("button", "link model-name", model.name);
      name.type = "button";
      name.title = "Chat with this model";
      name.addEventListener("click", () => {
        document.getElementById("chat-model").value = model.name;
        showView("chat");
      });
      item.append(name, el("span", "badge", model.state));
      return item;
    }),
  );
  if (!models.length) list.append(el("li", "muted", "No models: add one with `slmops deploy` or `slmops cache add`."));
}

export async function refreshModels() {
  try {
    models = await getJSON("/ui/api/models");
  } catch (error) {
    status(`Could not list the models: ${error.message}`, true);
    return;
  }
  const names = models.map((model) => model.name);
  // Prefer a loaded model for the chat: it answers without a load.
  const loaded = Math.max(0, models.findIndex((model) => model.state === "loaded"));
  SELECTS.forEach((id) => fillSelect(document.getElementById(id), names, id === "compare-right" ? 1 : id === "compare-left" ? 0 : loaded));
  renderSidebar(models);
  renderModelsTable(models);
}

function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  document.getElementById("refresh-models").addEventListener("click", refreshModels);
  document.addEventListener("models-changed", refreshModels);
  document.getElementById("page-model").addEventListener("change", (event) => showModelPage(event.target.value));
  setupChat();
  setupModels(refreshModels, (name) => {
    document.getElementById("page-model").value = name;
    showView("model");
  });
  setupCompare();
  refreshModels();
}

start();
