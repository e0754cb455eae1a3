// The Models view: the cache's models, their precision, size, context and state; load and unload.

import { call } from "./api.js";
import { button, el, formatBytes, status } from "./dom.js";

let refresh = async () => {};
let openPage = () => {};

export function setupModels(onChange, onOpen) {
  refresh = onChange;
  openPage = onOpen;
}

async function load(model, row) {
  row.querySelector(".state").textContent = "loading…";
  status(`Loading ${model.name}…`);
  try {
    await call(`/openai/load/${encodeURIComponent(model.name)}`, {}, (seconds) => status(`Loading ${model.name}: retrying in ${seconds} s…`));
    status(`${model.name} is loaded.`);
  } catch (error) {
    status(`Could not load ${model.name}: ${error.message}`, true);
  }
  await refresh();
}

async function unload(model) {
  try {
    const answer = await (await call(`/openai/unload/${encodeURIComponent(model.name)}`)).json();
    status(answer.unloaded ? `${model.name} is unloaded.` : `${model.name} was not loaded.`);
  } catch (error) {
    status(`Could not unload ${model.name}: ${error.message}`, true);
  }
  await refresh();
}

export function renderModelsTable(models) {
  const body = document.getElementById("models-table");
  body.replaceChildren(
    ...models.map((model) => {
      const row = el("tr");
      const cells = [
        model.name,
        model.precision ?? "?",
        formatBytes(model.size_bytes),
        model.context_length ? String(model.context_length) : "?",
      ].map((text) => el("td", null, text));
      const state = el("td", `state ${model.state}`, model.state);
      const actions = el("td", "actions");
      if (model.state === "loaded") actions.append(button("Unload", () => unload(model)));
      else actions.append(button("Load", () => load(model, row)));
      actions.append(button("Details", () => openPage(model.name)));
      row.append(...cells, state, actions);
      return row;
    }),
  );
  document.getElementById("models-note").textContent = models.length
    ? `${models.length} model(s). A model also loads on its first request.`
    : "The cache is empty.";
}
