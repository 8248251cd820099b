// The aeserve web page: draw or drop an image, send it to the five endpoints, show what they answer.
// Plain ES module, no dependencies. The drawing (or the chosen file) is sent as a multipart upload, so
// the service prepares it by the model's own rule (MNIST's digit pipeline, Fashion-MNIST's product one).
// The denoising panel needs the 28x28 input itself: /denoise?noise_std=0 returns it as "noisy"
// (the preprocessed input plus zero noise); the page adds its own Gaussian noise to it and sends JSON.

const SIDE = 28;
const ENDPOINTS = ["encode", "reconstruct", "denoise", "classify", "cluster"];
const $ = (id) => document.getElementById(id);

const state = {
  models: [], // ready models from GET /models
  defaults: {}, // dataset -> endpoint -> model name
  source: null, // {blob, name}: what is sent as the upload
  base: null, // Float32Array(784): the preprocessed 28x28 input, from /denoise?noise_std=0
  noise: null, // Float32Array(784): standard normal samples, scaled by the slider
  drawn: false, // anything on the pad since the last clear
};
const controllers = {};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Fetch JSON from the service; 503 with Retry-After is retried, any other error becomes an ApiError
 * carrying the service's own {"error": "..."} message. */
async function api(path, options = {}, signal = undefined) {
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { ...options, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, `the service did not answer (${err.message})`);
    }
    const retryAfter = Number(response.headers.get("retry-after"));
    if (response.status === 503 && retryAfter > 0 && attempt < 20) {
      await sleep(retryAfter * 1000);
      continue;
    }
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : text.slice(0, 200) || response.statusText;
      throw new ApiError(response.status, `${response.status}: ${message}`);
    }
    if (body === null) throw new ApiError(response.status, "the service answered something other than JSON");
    return body;
  }
}

/** A fresh AbortSignal for `key`, aborting the request still running under that key. */
function begin(key) {
  controllers[key]?.abort();
  const controller = new AbortController();
  controllers[key] = controller;
  return controller.signal;
}

function query(endpoint, extra = {}) {
  const params = new URLSearchParams({ dataset: dataset(), model: modelFor(endpoint) ?? "", ...extra });
  if (!params.get("model")) params.delete("model");
  return `/${endpoint}?${params}`;
}

function upload() {
  const form = new FormData();
  form.append("file", state.source.blob, state.source.name);
  return { method: "POST", body: form };
}

function jsonBody(image) {
  const rows = [];
  for (let y = 0; y < SIDE; y += 1) rows.push(Array.from(image.subarray(y * SIDE, (y + 1) * SIDE)));
  return { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ images: [rows] }) };
}

// ---------------------------------------------------------------- models and selects

const dataset = () => $("dataset").value;
const modelFor = (endpoint) => $(`model-${endpoint}`).value || null;
const modelInfo = (name) => state.models.find((m) => m.name === name);

async function loadModels() {
  for (;;) {
    try {
      const listing = await api("/models");
      const loading = listing.models.filter((m) => m.status === "pending" || m.status === "loading");
      state.models = listing.models.filter((m) => m.status === "ready");
      state.defaults = listing.defaults ?? {};
      fillDatasets(listing.datasets ?? Object.keys(state.defaults));
      if (listing.models.length > 0 && loading.length === 0) {
        const failed = listing.models.filter((m) => m.status === "failed").map((m) => m.name);
        setStatus(
          `${state.models.length} models ready.` + (failed.length ? ` Failed to load: ${failed.join(", ")}.` : "") +
            " Draw a digit or choose an image.",
        );
        return;
      }
      setStatus(`Loading the models (${state.models.length} of ${listing.models.length} ready)…`);
    } catch (err) {
      setStatus(`Cannot list the models: ${err.message}. Retrying…`, true);
    }
    await sleep(1000);
  }
}

/** The dataset menu: every dataset the service serves (GET /models "datasets"), mnist first when served. */
function fillDatasets(datasets) {
  const select = $("dataset");
  const current = select.value;
  const ordered = [...datasets].sort((a, b) => (a === "mnist" ? -1 : b === "mnist" ? 1 : a.localeCompare(b)));
  if (ordered.length === 0) return;
  select.replaceChildren(...ordered.map((name) => new Option(name, name)));
  select.value = ordered.includes(current) ? current : ordered[0];
}

function fillSelects() {
  const ds = dataset();
  for (const endpoint of ENDPOINTS) {
    const select = $(`model-${endpoint}`);
    const fallback = state.defaults[ds]?.[endpoint];
    const names = state.models
      .filter((m) => m.dataset === ds && (m.endpoints ?? []).includes(endpoint))
      .map((m) => m.name)
      .sort();
    select.replaceChildren();
    for (const name of names) {
      const option = new Option(name === fallback ? `${name} (default)` : name, name);
      option.selected = name === fallback;
      select.append(option);
    }
    if (names.length === 0) select.append(new Option(`none for ${ds}`, ""));
    select.disabled = names.length === 0;
    $(`${endpoint}-panel`).classList.toggle("unavailable", names.length === 0);
  }
  $("noise").disabled = !modelFor("denoise");
  $("renoise").disabled = !modelFor("denoise");
}

// ---------------------------------------------------------------- drawing helpers

/** Draw a 28x28 (or h x w) grey image (values 0..1, row-major) onto `canvas`, resizing it to fit. */
function drawGrey(canvas, values, height = SIDE, width = SIDE, low = 0, high = 1) {
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  const span = high - low || 1;
  for (let i = 0; i < width * height; i += 1) {
    const v = Math.round(Math.min(1, Math.max(0, (values[i] - low) / span)) * 255);
    image.data.set([v, v, v, 255], i * 4);
  }
  ctx.putImageData(image, 0, 0);
}

function blank(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
}

const flat = (nested) => Float32Array.from(nested.flat(Infinity));
const fmt = (x, digits = 4) => Number(x).toFixed(digits);
const pct = (p) => `${(100 * p).toFixed(1)} %`;

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error-text", isError);
}

function showError(endpoint, err) {
  const box = $(`${endpoint}-error`);
  if (err) {
    box.textContent = err.message;
    box.hidden = false;
  } else {
    box.textContent = "";
    box.hidden = true;
  }
}

/** Empty one panel, so that nothing stale stays beside an error or a missing model. */
function clearPanel(endpoint) {
  $(`${endpoint}-result`).textContent = "";
  showError(endpoint, null);
  const canvases = { encode: ["code"], reconstruct: ["reconstruction"], denoise: ["noisy", "denoised"] };
  for (const id of canvases[endpoint] ?? []) blank($(id));
  if (endpoint === "denoise") delete $("denoised").dataset.noiseStd;
  if (endpoint === "classify") $("probabilities").replaceChildren();
  if (endpoint === "cluster") $("cluster-detail").textContent = "";
}

function unavailable(endpoint) {
  clearPanel(endpoint);
  $(`${endpoint}-result`).textContent = `No model serves /${endpoint} for ${dataset()}.`;
}

// ---------------------------------------------------------------- the five panels

async function runEncode() {
  if (!modelFor("encode")) return unavailable("encode");
  const body = await api(query("encode"), upload(), begin("encode"));
  const code = Float32Array.from(body.codes[0]);
  const info = modelInfo(body.model) ?? {};
  const canvas = $("code");
  const low = Math.min(...code);
  const high = Math.max(...code);
  const shape = info.code_image_shape;
  if (Array.isArray(shape) && shape.length === 2 && shape[0] * shape[1] === code.length) {
    canvas.classList.add("pixels");
    canvas.classList.remove("bars-chart");
    drawGrey(canvas, code, shape[0], shape[1], low, high);
    $("code-caption").textContent =
      `The ${code.length} numbers drawn as a ${shape[0]}×${shape[1]} image (black ${fmt(low, 2)}, white ${fmt(high, 2)})`;
  } else {
    canvas.classList.remove("pixels");
    canvas.classList.add("bars-chart");
    drawBars(canvas, code, low, high);
    $("code-caption").textContent = `The ${code.length} numbers as bars, from ${fmt(low, 2)} to ${fmt(high, 2)}`;
  }
  canvas.setAttribute("aria-label", `Latent code of ${code.length} numbers from ${fmt(low, 2)} to ${fmt(high, 2)}`);
  $("encode-result").textContent = `${body.model} v${body.version}: ${body.latent_dim} numbers.`;
  showError("encode", null);
}

function drawBars(canvas, code, low, high) {
  canvas.width = Math.max(280, code.length * 3);
  canvas.height = 112;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(high, 0);
  const bottom = Math.min(low, 0);
  const span = top - bottom || 1;
  const zero = (top / span) * canvas.height;
  const step = canvas.width / code.length;
  code.forEach((v, i) => {
    const h = (Math.abs(v) / span) * canvas.height;
    ctx.fillStyle = v >= 0 ? "#1d4ed8" : "#b45309";
    ctx.fillRect(i * step, v >= 0 ? zero - h : zero, Math.max(1, step - 1), Math.max(1, h));
  });
  ctx.fillStyle = "#374151";
  ctx.fillRect(0, zero, canvas.width, 1);
}

async function runReconstruct() {
  if (!modelFor("reconstruct")) return unavailable("reconstruct");
  const body = await api(query("reconstruct"), upload(), begin("reconstruct"));
  drawGrey($("reconstruction"), flat(body.images[0]));
  const error = body.errors[0];
  const inside = body.in_distribution[0];
  const threshold = modelInfo(body.model)?.in_distribution?.threshold;
  const limit = threshold === undefined ? "" : ` (threshold ${fmt(threshold)}, the training set's 99th percentile)`;
  const result = $("reconstruct-result");
  result.replaceChildren();
  const verdict = document.createElement("span");
  verdict.className = `verdict ${inside ? "inside" : "outside"}`;
  verdict.textContent = inside ? "in distribution" : "out of distribution";
  result.append(`${body.model} v${body.version}: error (MSE) ${fmt(error)}, `, verdict, limit + ".");
  $("reconstruction").setAttribute("aria-label", `Reconstruction by ${body.model}, error ${fmt(error)}`);
  showError("reconstruct", null);
}

/** The preprocessing rule of the selected dataset's models (GET /models gives each model's). */
const datasetRule = () => state.models.find((m) => m.dataset === dataset())?.preprocess;

/** The 28x28 input as the service preprocessed it, from /denoise?noise_std=0 (its "noisy" output). Uses the
 * dataset's denoiser, or any denoiser when the dataset has none, told the dataset's preprocessing rule. */
async function runDenoise() {
  const own = modelFor("denoise");
  const anyDenoiser = state.models.find((m) => (m.endpoints ?? []).includes("denoise"));
  if (!own) unavailable("denoise");
  if (!own && !anyDenoiser) {
    state.base = null;
    blank($("input28"));
    return undefined;
  }
  const rule = datasetRule() ? `&preprocess=${encodeURIComponent(datasetRule())}` : "";
  const path = own
    ? query("denoise", { noise_std: "0" })
    : `/denoise?model=${encodeURIComponent(anyDenoiser.name)}&noise_std=0${rule}`;
  const body = await api(path, upload(), begin("denoise"));
  state.base = flat(body.noisy[0]);
  drawGrey($("input28"), state.base);
  if (!own) return undefined;
  if (noiseStd() === 0) {
    drawGrey($("noisy"), state.base);
    renderDenoised(body, 0, state.base);
    return undefined;
  }
  return runNoisy();
}

const noiseStd = () => Number($("noise").value);

function gaussian(n) {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - Math.random();
    const v = Math.random();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Add the slider's noise to the input client-side (clipped to 0..1), show it, and denoise it (JSON). */
async function runNoisy() {
  if (!state.base || !modelFor("denoise")) return;
  const std = noiseStd();
  if (!state.noise) state.noise = gaussian(SIDE * SIDE);
  const noisy = state.base.map((x, i) => Math.min(1, Math.max(0, x + std * state.noise[i])));
  drawGrey($("noisy"), noisy);
  const body = await api(query("denoise"), jsonBody(noisy), begin("denoise"));
  renderDenoised(body, std, noisy);
}

function mse(a, b) {
  let total = 0;
  for (let i = 0; i < a.length; i += 1) total += (a[i] - b[i]) ** 2;
  return total / a.length;
}

function renderDenoised(body, std, noisy) {
  const denoised = flat(body.images[0]);
  const canvas = $("denoised");
  drawGrey(canvas, denoised);
  canvas.dataset.noiseStd = std.toFixed(2);
  $("denoise-result").textContent =
    `${body.model} v${body.version}, noise std ${std.toFixed(2)}: error against the clean input ` +
    `${fmt(mse(noisy, state.base))} noisy, ${fmt(mse(denoised, state.base))} denoised.`;
  showError("denoise", null);
}

async function runClassify() {
  const list = $("probabilities");
  if (!modelFor("classify")) return unavailable("classify");
  const body = await api(query("classify"), upload(), begin("classify"));
  const prediction = body.predictions[0];
  const names = modelInfo(body.model)?.class_names ?? prediction.probabilities.map((_, i) => String(i));
  $("classify-result").textContent = `${prediction.class_name} (${pct(prediction.confidence)}), by ${body.model}`;
  list.replaceChildren(
    ...prediction.probabilities.map((p, i) => {
      const item = document.createElement("li");
      item.classList.toggle("top", i === prediction.label);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = names[i];
      const track = document.createElement("span");
      track.className = "track";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(bar);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct(p);
      item.append(name, track, value);
      return item;
    }),
  );
  showError("classify", null);
}

async function runCluster() {
  if (!modelFor("cluster")) return unavailable("cluster");
  const body = await api(query("cluster"), upload(), begin("cluster"));
  const assignment = body.assignments[0];
  const hint = assignment.label_hint ? `, mostly “${assignment.label_hint}” in training` : "";
  $("cluster-result").textContent = `Cluster ${assignment.cluster}${hint}`;
  let detail = `${body.model} v${body.version}, ${body.n_clusters} clusters.`;
  if (Array.isArray(assignment.distances)) {
    const order = assignment.distances.map((d, i) => [d, i]).sort((a, b) => a[0] - b[0]);
    detail += ` Distance to its centre ${fmt(order[0][0], 2)}`;
    if (order.length > 1) detail += `; the next nearest is cluster ${order[1][1]} at ${fmt(order[1][0], 2)}`;
    detail += ".";
  } else if (Array.isArray(assignment.probabilities)) {
    detail += ` Probability of this cluster ${fmt(assignment.probabilities[assignment.cluster], 3)}.`;
  }
  $("cluster-detail").textContent = detail;
  showError("cluster", null);
}

const RUNNERS = {
  encode: runEncode,
  reconstruct: runReconstruct,
  denoise: runDenoise,
  classify: runClassify,
  cluster: runCluster,
};

/** Run one endpoint's panel, showing its error (the API's message) in the panel. True when it succeeded. */
async function run(endpoint, runner = RUNNERS[endpoint]) {
  const panel = $(`${endpoint}-panel`);
  panel.setAttribute("aria-busy", "true");
  try {
    await runner();
    return true;
  } catch (err) {
    if (err.name === "AbortError") return true;
    if (modelFor(endpoint)) clearPanel(endpoint);
    else unavailable(endpoint);
    if (runner === runDenoise) {
      state.base = null;
      blank($("input28"));
    }
    showError(endpoint, err);
    return false;
  } finally {
    panel.removeAttribute("aria-busy");
  }
}

async function analyse() {
  if (!state.source) return;
  const started = performance.now();
  setStatus(`Sending ${state.source.name}…`);
  const results = await Promise.all(ENDPOINTS.map((endpoint) => run(endpoint)));
  const failed = ENDPOINTS.filter((_, i) => !results[i]);
  const took = Math.round(performance.now() - started);
  if (failed.length) setStatus(`Done in ${took} ms; failed: ${failed.map((e) => `/${e}`).join(", ")}.`, true);
  else setStatus(`${state.source.name}: done in ${took} ms.`);
}

let analyseTimer = 0;
function analyseSoon(delay = 200) {
  clearTimeout(analyseTimer);
  analyseTimer = setTimeout(analyse, delay);
}

// ---------------------------------------------------------------- the drawing pad

const pad = $("pad");
const ink = pad.getContext("2d");

function clearPad() {
  ink.fillStyle = "#ffffff";
  ink.fillRect(0, 0, pad.width, pad.height);
  state.drawn = false;
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [((event.clientX - rect.left) * pad.width) / rect.width, ((event.clientY - rect.top) * pad.height) / rect.height];
}

function stroke(from, to) {
  ink.strokeStyle = "#000000";
  ink.lineWidth = Number($("brush").value);
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(...from);
  ink.lineTo(...to);
  ink.stroke();
  state.drawn = true;
}

async function useCanvas() {
  const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  state.source = { blob, name: "drawing.png" };
  state.noise = null;
  analyseSoon();
}

let last = null;
pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  last = padPoint(event);
  $("file").value = "";
  stroke(last, last);
  clearTimeout(analyseTimer);
});
pad.addEventListener("pointermove", (event) => {
  if (!last) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const point = padPoint(e);
    stroke(last, point);
    last = point;
  }
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!last) return;
    last = null;
    useCanvas();
  });
}

function resetResults() {
  state.source = null;
  state.base = null;
  state.noise = null;
  blank($("input28"));
  for (const endpoint of ENDPOINTS) clearPanel(endpoint);
}

$("clear").addEventListener("click", () => {
  clearPad();
  resetResults();
  $("file").value = "";
  setStatus("Cleared. Draw a digit or choose an image.");
});

$("example").addEventListener("click", () => {
  clearPad();
  const path = [[85, 70], [200, 70], [185, 110], [125, 230]];
  for (let i = 1; i < path.length; i += 1) stroke(path[i - 1], path[i]);
  useCanvas();
});

$("brush").addEventListener("input", () => {
  $("brush-value").textContent = `${$("brush").value} px`;
});

// ---------------------------------------------------------------- image files: choose or drop

async function useFile(file) {
  if (!file) return;
  state.source = { blob: file, name: file.name || "image" };
  state.noise = null;
  clearPad();
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    bitmap.close();
  } catch {
    ink.fillStyle = "#374151";
    ink.font = "16px system-ui, sans-serif";
    ink.fillText("(no preview; sent as it is)", 20, pad.height / 2);
  }
  analyse();
}

$("file").addEventListener("change", (event) => useFile(event.target.files[0]));

const zone = $("input-panel");
zone.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("dropzone").classList.add("dragging");
});
zone.addEventListener("dragleave", () => $("dropzone").classList.remove("dragging"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  $("dropzone").classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});

// ---------------------------------------------------------------- settings

$("dataset").addEventListener("change", () => {
  fillSelects();
  analyse();
});
for (const endpoint of ENDPOINTS) {
  $(`model-${endpoint}`).addEventListener("change", () => state.source && run(endpoint));
}

let noiseTimer = 0;
$("noise").addEventListener("input", () => {
  $("noise-value").textContent = noiseStd().toFixed(2);
  clearTimeout(noiseTimer);
  if (!state.source) return;
  // the input is known already: only the noisy version goes to /denoise (as JSON)
  noiseTimer = setTimeout(() => run("denoise", state.base ? runNoisy : runDenoise), 120);
});
$("renoise").addEventListener("click", () => {
  if (!state.source) return;
  state.noise = gaussian(SIDE * SIDE);
  run("denoise", state.base ? runNoisy : runDenoise);
});

// ---------------------------------------------------------------- start

clearPad();
await loadModels();
fillSelects();
document.body.dataset.ready = "true";
