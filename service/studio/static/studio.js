// curvedit studio: edit an image with sliders, live, through the server's Open Inference Protocol endpoint.
// Plain JavaScript, no build step, nothing from another origin. Every edit, render and encode is a
// POST /v2/models/{name}/infer with binary tensors; /studio/api/ only lists models, samples seeds and fits
// uploaded files to the model's size.
"use strict";

const STRIP = [-1.5, -1, -0.5, 0, 0.5, 1, 1.5];  // the traversal strip's amounts (as `curvedit traverse`)
const SLIDER = { min: -3, max: 3, step: 0.05 };
const SETTLE_MS = 150;  // strips and the order check wait this long after the last image update

const $ = (id) => document.getElementById(id);
const state = {
  models: [], maxUpload: 0, model: null, editor: null, directions: [], units: "",
  z: null, t: [], source: null, token: sessionStorage.getItem("curvedit-token") || "",
  latencies: [], updates: 0, generation: 0, lastImage: null, commutation: null, busy: 0,
};
window.curveditStudio = state;  // for tests and for the curious: the page's whole state

// -- talking to the server ------------------------------------------------------------------------------
class ServerError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}

async function check(response) {
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
  if (response.status === 401) $("auth").hidden = false;
  if (response.status === 429) message += " (the server is busy; try again)";
  throw new ServerError(response.status, message);
}

async function getJSON(url) {
  return (await check(await fetch(url, { headers: headers() }))).json();
}

// One inference request: z float32 [n, d] and t float32 [n, k], both row-major; returns the outputs asked for
// ({name: {shape, data}}, data a Float32Array or a Uint8Array).
async function infer(z, t, n, outputs, images) {
  const m = state.model, k = state.directions.length;
  const inputs = [];
  const blobs = [];
  if (images) {
    inputs.push({ name: "images", datatype: "UINT8", shape: [n, ...m.image_shape],
                  parameters: { binary_data_size: images.byteLength } });
    blobs.push(images);
  } else {
    inputs.push({ name: "z", datatype: "FP32", shape: [n, m.latent_dim], parameters: { binary_data_size: z.byteLength } });
    blobs.push(z);
  }
  if (t) {
    inputs.push({ name: "t", datatype: "FP32", shape: [n, k], parameters: { binary_data_size: t.byteLength } });
    blobs.push(t);
  }
  const head = new TextEncoder().encode(JSON.stringify({
    inputs, outputs: outputs.map((name) => ({ name, parameters: { binary_data: true } })),
    parameters: { editor: state.editor },
  }));
  // One contiguous buffer: Chromium sends it faster than a Blob of parts.
  const body = new Uint8Array(head.length + blobs.reduce((sum, b) => sum + b.byteLength, 0));
  body.set(head, 0);
  let at = head.length;
  for (const b of blobs) { body.set(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), at); at += b.byteLength; }
  const response = await check(await fetch(`/v2/models/${encodeURIComponent(m.name)}/infer`, {
    method: "POST", body,
    headers: headers({ "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(head.length) }),
  }));
  const buffer = await response.arrayBuffer();
  const length = Number(response.headers.get("Inference-Header-Content-Length"));
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 0, length)));
  const out = {};
  let offset = length;
  for (const o of meta.outputs) {
    const size = o.parameters.binary_data_size;
    const bytes = buffer.slice(offset, offset + size);
    offset += size;
    out[o.name] = { shape: o.shape, data: o.datatype === "FP32" ? new Float32Array(bytes) : new Uint8Array(bytes) };
  }
  return out;
}

// -- drawing ---------------------------------------------------------------------------------------------
function draw(canvas, rgb, index = 0) {
  const [h, w] = state.model.image_shape;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  const base = index * h * w * 3;
  for (let p = 0; p < h * w; p++) {
    pixels.data[4 * p] = rgb[base + 3 * p];
    pixels.data[4 * p + 1] = rgb[base + 3 * p + 1];
    pixels.data[4 * p + 2] = rgb[base + 3 * p + 2];
    pixels.data[4 * p + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}

function showError(error) {
  $("message-text").textContent = error instanceof ServerError || error instanceof Error ? error.message : String(error);
  $("message").hidden = false;
}

function clearError() { $("message").hidden = true; $("message-text").textContent = ""; }

function setStatus(text) { $("status").textContent = text; }

// -- the main image: one request in flight at most, the latest slider values win ---------------------------
let inflight = false, dirty = false, pendingSince = null, settleTimer = null, settling = false;
// Nothing in flight, nothing waiting: the image, the strips and the order check show the current amounts.
state.idle = () => !inflight && !dirty && !settling && state.busy === 0;

function requestUpdate() {
  if (!state.z) return;
  dirty = true;
  if (pendingSince === null) pendingSince = performance.now();
  if (!inflight) pump();
}

async function pump() {
  inflight = true;
  while (dirty) {
    dirty = false;
    const since = pendingSince;
    pendingSince = null;
    try {
      const out = await infer(Float32Array.from(state.z), Float32Array.from(state.t), 1, ["images"]);
      draw($("image"), out.images.data);
      state.lastImage = out.images.data;
      const ms = performance.now() - since;
      state.latencies.push(ms);
      state.updates += 1;
      const recent = state.latencies.slice(-20).sort((a, b) => a - b);
      $("latency").textContent = `update: ${ms.toFixed(0)} ms (median of the last ${recent.length}: ` +
        `${recent[Math.floor(recent.length / 2)].toFixed(0)} ms)`;
    } catch (error) {
      showError(error);
    }
  }
  inflight = false;
  clearTimeout(settleTimer);
  settling = true;
  settleTimer = setTimeout(refreshViews, SETTLE_MS);
}

// -- strips and the order check, once the sliders rest --------------------------------------------------
async function refreshViews() {
  const generation = ++state.generation;
  state.busy += 1;
  settling = false;
  try {
    await Promise.all([refreshStrips(generation), refreshCommutation(generation)]);
  } catch (error) {
    if (generation === state.generation) showError(error);
  } finally {
    state.busy -= 1;
  }
}

async function refreshStrips(generation) {
  const k = state.directions.length, d = state.model.latent_dim, s = STRIP.length, n = k * s;
  const z = new Float32Array(n * d), t = new Float32Array(n * k);
  for (let row = 0; row < n; row++) {
    z.set(state.z, row * d);
    t.set(state.t, row * k);
    t[row * k + Math.floor(row / s)] = STRIP[row % s];  // direction row/s at amount STRIP[row % s]
  }
  const out = await infer(z, t, n, ["images"]);  // every strip in one request
  if (generation !== state.generation) return;
  const cells = document.querySelectorAll(".strip canvas");
  cells.forEach((cell, i) => draw(cell, out.images.data, i));
  markStrips();
}

function markStrips() {
  document.querySelectorAll(".strip").forEach((strip, k) => {
    strip.querySelectorAll("canvas").forEach((cell, i) => {
      cell.classList.toggle("current", Math.abs(STRIP[i] - state.t[k]) < 1e-6);
    });
  });
}

// The same amounts applied one direction per request, in slider order and in reverse: two request chains.
async function chain(order) {
  const k = state.directions.length;
  let z = Float32Array.from(state.z), images = null;
  for (let i = 0; i < order.length; i++) {
    const t = new Float32Array(k);
    t[order[i]] = state.t[order[i]];
    const last = i === order.length - 1;
    const out = await infer(z, t, 1, last ? ["z_edited", "images"] : ["z_edited"]);
    z = out.z_edited.data;
    if (last) images = out.images.data;
  }
  return { z, images };
}

async function refreshCommutation(generation) {
  const order = state.t.map((v, k) => [v, k]).filter(([v]) => v !== 0).map(([, k]) => k);
  const names = (ks) => ks.map((k) => state.directions[k]).join(" → ");
  if (order.length < 2) {
    state.commutation = null;
    $("commute-result").textContent = "Move two or more sliders to compare orders.";
    $("order-a-label").textContent = $("order-b-label").textContent = "–";
    return;
  }
  const reverse = [...order].reverse();
  const [a, b] = await Promise.all([chain(order), chain(reverse)]);
  if (generation !== state.generation) return;
  draw($("order-a"), a.images);
  draw($("order-b"), b.images);
  $("order-a-label").textContent = names(order);
  $("order-b-label").textContent = names(reverse);
  let pixels = 0, latent = 0;
  for (let i = 0; i < a.images.length; i++) pixels = Math.max(pixels, Math.abs(a.images[i] - b.images[i]));
  for (let i = 0; i < a.z.length; i++) latent = Math.max(latent, Math.abs(a.z[i] - b.z[i]));
  state.commutation = { order: names(order), reverse: names(reverse), maxPixelDiff: pixels, maxLatentDiff: latent };
  $("commute-result").textContent = `max pixel difference ${pixels} of 255; max |Δz| ${latent.toExponential(1)} ` +
    `(${order.length} edits, ${2 * order.length} requests)`;
}

// -- the controls ----------------------------------------------------------------------------------------
function buildSliders() {
  const box = $("directions");
  box.textContent = "";
  state.directions.forEach((name, k) => {
    const row = document.createElement("div");
    row.className = "direction";
    const label = document.createElement("label");
    label.className = "name";
    label.textContent = name;
    label.htmlFor = `slider-${k}`;
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", id: `slider-${k}`, min: SLIDER.min, max: SLIDER.max, step: SLIDER.step,
                            value: state.t[k] });
    slider.dataset.direction = name;
    const value = document.createElement("output");
    value.id = `value-${k}`;
    value.textContent = state.t[k].toFixed(2);
    slider.addEventListener("input", () => {
      state.t[k] = Number(slider.value);
      value.textContent = state.t[k].toFixed(2);
      requestUpdate();
    });
    const strip = document.createElement("div");
    strip.className = "strip";
    strip.id = `strip-${k}`;
    STRIP.forEach((amount, i) => {
      const cell = document.createElement("canvas");
      cell.id = `strip-${k}-${i}`;
      cell.title = `${name} = ${amount}`;
      cell.addEventListener("click", () => setAmount(k, amount));
      strip.appendChild(cell);
    });
    row.append(label, slider, value, strip);
    box.appendChild(row);
  });
  $("units").textContent = state.units ? `(${state.units})` : "";
}

function setAmount(k, amount) {
  state.t[k] = amount;
  $(`slider-${k}`).value = amount;
  $(`value-${k}`).textContent = amount.toFixed(2);
  requestUpdate();
}

function reset() {
  state.t = state.t.map(() => 0);
  state.directions.forEach((_, k) => setAmount(k, 0));
}

function pickEditor(name) {
  const editor = state.model.editors.find((e) => e.name === name) || state.model.editors[0];
  state.editor = editor.name;
  state.directions = editor.directions;
  state.units = editor.units;
  state.t = editor.directions.map(() => 0);
  buildSliders();
  requestUpdate();
}

function pickModel(name) {
  state.model = state.models.find((m) => m.name === name);
  const editors = $("editor");
  editors.textContent = "";
  for (const e of state.model.editors) editors.add(new Option(e.name, e.name, false, e.name === state.model.default_editor));
  $("upload").disabled = !state.model.can_encode;
  $("upload-note").textContent = state.model.can_encode
    ? `PNG or JPEG, up to ${(state.maxUpload / 1048576).toFixed(0)} MB; centre-cropped and resized to ` +
      `${state.model.image_shape[0]}×${state.model.image_shape[1]}, then encoded.`
    : `${state.model.name} has no encoder; models that can start from an image: ` +
      (state.models.filter((m) => m.can_encode).map((m) => m.name).join(", ") || "none here") + ".";
  state.z = null;
  pickEditor(state.model.default_editor);
  return startFromSeed(Number($("seed").value) || 0);
}

async function startFromSeed(seed) {
  const sample = await getJSON(`/studio/api/models/${encodeURIComponent(state.model.name)}/sample?seed=${seed}`);
  start(sample.z, { seed: sample.seed });
}

function start(z, source) {
  state.z = Array.from(z);
  state.source = source;
  $("source").textContent = source.seed !== undefined ? `seed ${source.seed}` : `image ${source.image}`;
  requestUpdate();
}

async function upload(file) {
  if (!file) return;
  if (file.size > state.maxUpload) {
    throw new Error(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over the ` +
                    `${(state.maxUpload / 1048576).toFixed(0)} MB upload limit; pick a smaller image`);
  }
  setStatus(`encoding ${file.name}…`);
  const fitted = await getJSONPost(`/studio/api/models/${encodeURIComponent(state.model.name)}/fit`, file);
  const out = await infer(null, null, 1, ["z_edited"], Uint8Array.from(fitted.data));  // no t: encode only
  start(out.z_edited.data, { image: file.name });
  setStatus("ready");
}

async function getJSONPost(url, body) {
  return (await check(await fetch(url, { method: "POST", body, headers: headers({ "Content-Type": "application/octet-stream" }) }))).json();
}

// -- downloads -------------------------------------------------------------------------------------------
function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function stateJSON() {
  const edits = {};
  state.directions.forEach((name, k) => { edits[name] = state.t[k]; });
  return { format: "curvedit-studio-state/1", model: state.model.name, version: state.model.version,
           editor: state.editor, z: [Array.from(state.z)], edits, source: state.source };
}

function baseName() {
  const from = state.source && state.source.seed !== undefined ? `seed${state.source.seed}` : "image";
  return `curvedit-${state.model.name}-${from}`;
}

// -- wiring ----------------------------------------------------------------------------------------------
function guarded(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (error) { showError(error); setStatus("ready"); }
  };
}

async function main() {
  $("message-close").addEventListener("click", clearError);
  $("auth").addEventListener("submit", guarded(async (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("curvedit-token", state.token);
    $("auth").hidden = true;
    clearError();
    await load();
  }));
  $("model").addEventListener("change", guarded(async (e) => { clearError(); await pickModel(e.target.value); }));
  $("editor").addEventListener("change", (e) => pickEditor(e.target.value));
  $("use-seed").addEventListener("click", guarded(async () => {
    clearError();
    const seed = Number($("seed").value);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`the seed must be a whole number ≥ 0, got ${$("seed").value}`);
    await startFromSeed(seed);
  }));
  $("random").addEventListener("click", guarded(async () => {
    clearError();
    const seed = crypto.getRandomValues(new Uint32Array(1))[0];
    $("seed").value = seed;
    await startFromSeed(seed);
  }));
  $("upload").addEventListener("change", guarded(async (e) => {
    clearError();
    const file = e.target.files[0];
    e.target.value = "";  // the same file can be picked again
    await upload(file);
  }));
  $("reset").addEventListener("click", reset);
  $("download-png").addEventListener("click", () => {
    if (state.lastImage) $("image").toBlob((blob) => save(blob, `${baseName()}.png`), "image/png");
  });
  $("download-json").addEventListener("click", () => {
    if (state.z) save(new Blob([JSON.stringify(stateJSON(), null, 1)], { type: "application/json" }), `${baseName()}.json`);
  });
  await guarded(load)();
}

async function load() {
  const info = await getJSON("/studio/api/models");
  state.models = info.models;
  state.maxUpload = info.max_upload_bytes;
  const select = $("model");
  select.textContent = "";
  for (const m of state.models) select.add(new Option(`${m.name}${m.can_encode ? " (encodes)" : ""}`, m.name));
  await pickModel(state.models[0].name);
  setStatus("ready");
}

main();
