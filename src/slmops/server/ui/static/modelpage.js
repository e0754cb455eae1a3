// The Model page: a model's inference_model.json, conversion.json, deploy report and plots.

import { call, getJSON } from "./api.js";
import { el, status } from "./dom.js";

const $ = (id) => document.getElementById(id);
const QUALITY = [
  ["ΔPPL", "delta_ppl_pct", (value) => `${value >= 0 ? "+" : ""}${value.toFixed(2)} %`],
  ["KLD (mean)", "kld_mean", (value) => value.toFixed(4)],
  ["same top-1 token", "same_top_pct", (value) => `${value.toFixed(1)} %`],
  ["PPL", "ppl", (value) => value.toFixed(3)],
  ["reference PPL", "ref_ppl", (value) => value.toFixed(3)],
];
let objectURLs = [];

function section(title, ...children) {
  const node = el("section", "card");
  node.append(el("h3", null, title), ...children);
  return node;
}

function jsonBlock(value) {
  const details = el("details");
  details.append(el("summary", null, "JSON"), el("pre", "json", JSON.stringify(value, null, 2)));
  return details;
}

function fileSection(title, value, file) {
  if (value == null) return section(title, el("p", "muted", `No ${file} in this model's folder.`));
  if (typeof value === "string") return section(title, el("p", "error", value));
  const rows = Object.entries(value)
    .filter(([, item]) => item === null || typeof item !== "object")
    .map(([key, item]) => {
      const row = el("tr");
      row.append(el("th", null, key), el("td", null, String(item)));
      return row;
    });
  const table = el("table", "table keys");
  table.append(...rows);
  return section(title, table, jsonBlock(value));
}

function qualityTable(quality) {
  const figures = quality?.figures;
  if (!figures) return el("p", "muted", "No quality evaluation (the deploy skipped it).");
  const table = el("table", "table keys quality");
  for (const [label, key, format] of QUALITY) {
    if (figures[key] == null) continue;
    const row = el("tr");
    row.append(el("th", null, label), el("td", null, format(figures[key])));
    table.append(row);
  }
  return table;
}

function checklist(validation) {
  const checks = validation?.checks || [];
  if (!checks.length) return el("p", "muted", "No validation checklist.");
  const table = el("table", "table checklist");
  const head = el("tr");
  head.append(...["#", "check", "result", "evidence"].map((text) => el("th", null, text)));
  table.append(head);
  for (const check of checks) {
    const row = el("tr", "check");
    const verdict = el("td", `verdict ${String(check.status).toLowerCase()}`, check.status);
    const evidence = el("td");
    evidence.append(el("div", null, check.summary ?? ""), jsonBlock(check.evidence ?? {}));
    row.append(el("td", null, String(check.item)), el("td", null, check.name), verdict, evidence);
    table.append(row);
  }
  return table;
}

function deploySection(report) {
  if (report == null) return section("Deploy report", el("p", "muted", "No deploy-report.json: this model was not made by `slmops deploy`."));
  if (typeof report === "string") return section("Deploy report", el("p", "error", report));
  const steps = el("ul", "steps");
  for (const step of report.steps || []) steps.append(el("li", null, `${step.step}: ${step.status}${step.summary ? ` — ${step.summary}` : ""}`));
  const cpu = report.cpu_info?.model_name ?? report.cpu_info?.name;
  return section(
    "Deploy report",
    el("p", null, `${report.name} · ${report.precision}${report.variant ? ` (${report.variant})` : ""}${cpu ? ` · measured on ${cpu}` : ""}`),
    steps,
    el("h4", null, "Quality against FP32"),
    qualityTable(report.quality),
    el("h4", null, "Checklist"),
    checklist(report.validation),
    jsonBlock(report),
  );
}

// Plots are fetched with the API key and shown from blob: URLs (an <img src> sends no key).
async function plotSection(name, plots) {
  const node = section("Plots");
  if (!plots.length) node.append(el("p", "muted", "No bench or sweep plots (PNG) in this model's folder."));
  for (const file of plots) {
    const figure = el("figure");
    const image = el("img");
    image.alt = file;
    const blob = await (await call(`/ui/api/models/${encodeURIComponent(name)}/plots/${encodeURIComponent(file)}`)).blob();
    const url = URL.createObjectURL(blob);
    objectURLs.push(url);
    image.src = url;
    figure.append(image, el("figcaption", null, file));
    node.append(figure);
  }
  return node;
}

export async function showModelPage(name) {
  const page = $("model-page");
  if (!name) {
    page.replaceChildren(el("p", "muted", "No model selected."));
    return;
  }
  objectURLs.forEach((url) => URL.revokeObjectURL(url));
  objectURLs = [];
  try {
    const details = await getJSON(`/ui/api/models/${encodeURIComponent(name)}`);
    page.replaceChildren(
      el("h2", null, details.name),
      deploySection(details.deploy_report),
      fileSection("inference_model.json", details.inference_model, "inference_model.json"),
      fileSection("conversion.json", details.conversion, "conversion.json"),
      await plotSection(details.name, details.plots),
    );
  } catch (error) {
    status(`Could not read ${name}: ${error.message}`, true);
  }
}
