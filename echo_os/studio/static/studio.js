// The echo-os studio: one ES module over the server's own API (same origin; the session cookie or no token).
// Render -> POST /api/render; each job is followed on its SSE stream (/api/jobs/{id}/events), whose progress
// events now and then carry a live preview (a JPEG data URL decoded from the latents). Results, the
// lightbox and its actions, the story view and the search all use the routes README's API table lists.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const SETTINGS_KEY = "echo-os-studio:settings";
const PRESETS_KEY = "echo-os-studio:presets";
const FIELDS = ["prompt", "negative", "style", "model", "engine", "size", "seed", "steps", "cfg", "count", "project"];

const state = { options: null, styles: [], jobs: new Map(), artifacts: new Map(), current: null, ready: {}, written: new Map() };

// ---- small helpers ---------------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

async function api(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (body instanceof Blob) { init.body = body; init.headers["Content-Type"] = body.type || "application/octet-stream"; }
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  return { ok: response.ok, status: response.status, data, headers: response.headers };
}

function say(text) { $("#status").textContent = text; }

// A 422's detail[] names the field in loc ["body", name] or ["query", name]; the page has a
// `[data-error=...]` box next to each field. `prefix` maps the lightbox's bodies onto its own boxes.
function clearErrors(root = document) {
  $$(".error", root).forEach(box => { box.textContent = ""; });
  $$(".invalid", root).forEach(node => node.classList.remove("invalid"));
}

function showProblem(answer, { prefix = "", fallback = "form", rename = {} } = {}) {
  const detail = answer.data && answer.data.detail;
  if (answer.status === 422 && Array.isArray(detail)) {
    for (const problem of detail) {
      const loc = problem.loc || [];
      const name = rename[loc[1]] || loc[1];
      let box = $(`[data-error="${prefix}${name}"]`) || $(`[data-error="${fallback}"]`);
      const field = $(`[data-field="${prefix}${name}"]`);
      if (field) field.classList.add("invalid");
      box.textContent = (box.textContent ? box.textContent + " " : "") + (problem.msg || "invalid").replace(/^Value error, /, "");
    }
    return;
  }
  const box = $(`[data-error="${fallback}"]`);
  box.textContent = typeof detail === "string" ? detail : `the server answered ${answer.status}`;
}

function shellQuote(text) { return `'${String(text).replaceAll("'", `'\\''`)}'`; }

// ---- the render form -------------------------------------------------------------------------------------

function readForm() {
  const body = { prompt: $("#f-prompt").value.trim(), negative: $("#f-negative").value, model: $("#f-model").value,
                 engine: $("#f-engine").value, size: $("#f-size").value.trim(), project: $("#f-project").value.trim() || "default" };
  if ($("#f-style").value) body.style = $("#f-style").value;
  for (const name of ["steps", "count"]) body[name] = parseNumber($(`#f-${name}`).value, true);
  body.cfg = parseNumber($("#f-cfg").value, false);
  const seed = $("#f-seed").value.trim();
  if (seed !== "") body.seed = parseNumber(seed, true);
  if (!body.model) delete body.model;
  return body;
}

// Numbers go to the server as typed, so its bounds (and its 422 naming the field) stay the one rule.
function parseNumber(text, integer) {
  const value = Number(text);
  if (text === "" || Number.isNaN(value)) return text;
  return integer && Number.isInteger(value) ? value : integer ? text : value;
}

function saveSettings() {
  const saved = {};
  for (const name of FIELDS) saved[name] = $(`#f-${name}`).value;
  saved.seedLock = $("#f-seed-lock").checked;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(saved));
}

function applySettings(saved) {
  for (const name of FIELDS) {
    const field = $(`#f-${name}`);
    if (saved[name] === undefined) continue;
    if (field.tagName === "SELECT" && ![...field.options].some(o => o.value === saved[name])) continue;
    field.value = saved[name];
  }
  if ("seedLock" in saved) $("#f-seed-lock").checked = saved.seedLock;
  syncSizePreset(); showStyle(); showEngineWhy();
}

function restoreSettings() {
  try { applySettings(JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}")); } catch { /* a damaged entry: defaults */ }
}

function syncSizePreset() {
  const size = $("#f-size").value.trim();
  const preset = $("#size-preset");
  preset.value = [...preset.options].some(o => o.value === size) ? size : "";
}

function showStyle() {
  const name = $("#f-style").value;
  const style = state.styles.find(s => s.name === name);
  const swatch = $("#style-swatch");
  if (!style) { swatch.hidden = true; swatch.removeAttribute("src"); delete swatch.dataset.url; delete swatch.dataset.state; swatch.title = "no style"; $("#style-text").textContent = ""; return; }
  // A rendered sample (rendered once per style content and model by the server, then cached), fetched off
  // the page's way: 202 is the draft card while the render runs, asked for again until it is ready.
  swatch.alt = `${style.name} sample`; swatch.hidden = false;
  loadSwatch(swatch, style.name, `/api/studio/styles/${encodeURIComponent(style.name)}/swatch`, 0);
  $("#style-text").textContent = (style.prompt || "(no words)") + (style.negative ? ` · not: ${style.negative}` : "")
    + (style.learned ? " · learned" : style.builtin ? " · built-in" : "");
}

async function loadSwatch(swatch, name, url, tries) {
  swatch.dataset.url = url;
  let response;
  try { response = await fetch(url, { credentials: "same-origin" }); } catch { return; }
  if (swatch.dataset.url !== url || $("#f-style").value !== name) return;  // another style was picked meanwhile
  if (!response.ok) { swatch.title = `${name}: no swatch (${response.status})`; return; }
  const state = response.headers.get("X-Echo-Swatch") || "draft";
  const blob = await response.blob();
  if (swatch.dataset.url !== url || $("#f-style").value !== name) return;
  if (swatch.src.startsWith("blob:")) URL.revokeObjectURL(swatch.src);
  swatch.src = URL.createObjectURL(blob);
  swatch.dataset.state = state;
  const model = response.headers.get("X-Echo-Swatch-Model"), engine = response.headers.get("X-Echo-Swatch-Engine");
  swatch.title = state === "rendered" ? `${name}: rendered by ${model} (${engine})`
    : state === "pending" ? `${name}: draft card while ${model} renders the sample`
    : `${name}: draft card (${response.headers.get("X-Echo-Swatch-Reason") || "no model can render here"})`;
  if (state === "pending" && tries < 150) setTimeout(() => loadSwatch(swatch, name, url, tries + 1), 2000);
}

function showEngineWhy() {
  const engine = $("#f-engine").value;
  const model = state.options && state.options.models.find(m => m.name === $("#f-model").value);
  const why = $("#engine-why");
  if (engine !== "auto" || !model) { why.textContent = engine !== "auto" ? `${engine}, as chosen` : ""; return; }
  // The reason is long (every engine skipped, and why): a one-line summary that opens to the whole of it.
  const summary = model.auto.available ? `auto → ${model.auto.name} · why?` : "auto finds no engine · why?";
  why.replaceChildren(el("details", {}, el("summary", { textContent: summary }),
    ...model.auto.reason.split(/; (?=skipped )|; (?=\w+: )/).map(part => el("p", { textContent: part }))));
}

async function loadOptions() {
  const [options, styles] = await Promise.all([api("GET", "/api/studio/options"), api("GET", "/api/styles")]);
  if (options.ok) {
    state.options = options.data;
    const model = $("#f-model");
    model.replaceChildren(...options.data.models.map(m => el("option", { value: m.name, textContent: m.name })));
    if (options.data.models.some(m => m.name === options.data.default_model)) model.value = options.data.default_model;
    $("#f-engine").append(...options.data.engines.filter(name => name !== "auto").map(name => el("option", { value: name, textContent: name })));
    $("#lb-scorer").replaceChildren(...options.data.scorers.map(name => el("option", { value: name, textContent: name })));
    if (!options.data.scorers.length) $("#lb-scorer").append(el("option", { value: "clip", textContent: "clip (not here)" }));
    $("#model-list").replaceChildren(...options.data.models.map(m => el("option", { value: m.name })));
    $("#scheduler-list").replaceChildren(...options.data.schedulers.map(name => el("option", { value: name })));
    $("#engine-list").replaceChildren(...options.data.engines.map(name => el("option", { value: name })));
  }
  if (styles.ok) {
    state.styles = styles.data;
    $("#f-style").append(...styles.data.map(s => el("option", { value: s.name, textContent: s.name })));
  }
}

async function submitRender(event) {
  if (event) event.preventDefault();
  clearErrors($("#render-form"));
  const body = readForm();
  if (!body.prompt) { showProblem({ status: 422, data: { detail: [{ loc: ["body", "prompt"], msg: "write a prompt first" }] } }); return; }
  saveSettings();
  const answer = await api("POST", "/api/render", body);
  if (!answer.ok) { showProblem(answer); return; }
  if (!$("#f-seed-lock").checked) $("#f-seed").value = "";
  follow(answer.data.job_id, { what: body.prompt, events: answer.data.events_url });
  say(`queued ${answer.data.job_id.slice(0, 8)}`);
}

// ---- presets ---------------------------------------------------------------------------------------------

function presets() { try { return JSON.parse(localStorage.getItem(PRESETS_KEY) || "{}"); } catch { return {}; } }

function showPresets() {
  const pick = $("#preset-pick");
  pick.replaceChildren(el("option", { value: "", textContent: "(saved settings)" }),
                       ...Object.keys(presets()).sort().map(name => el("option", { value: name, textContent: name })));
}

function savePreset() {
  const name = (prompt("Name of this preset (size, steps, cfg, style, model, engine, negative):") || "").trim();
  if (!name) return;
  const all = presets();
  all[name] = Object.fromEntries(["negative", "style", "model", "engine", "size", "steps", "cfg", "count"]
    .map(field => [field, $(`#f-${field}`).value]));
  localStorage.setItem(PRESETS_KEY, JSON.stringify(all));
  showPresets(); $("#preset-pick").value = name;
}

// ---- the queue: every job with its progress, live preview and cancel -------------------------------------

function jobRow(id, what) {
  const row = el("li", { class: "job", dataset: { id, status: "queued" } },
    el("img", { class: "preview", alt: "" }),
    el("div", {}, el("div", { class: "what", textContent: what || id, title: what || "" }),
       el("progress", { max: 1, value: 0 }), el("div", { class: "state", textContent: "queued" })),
    el("button", { type: "button", class: "cancel", textContent: "Cancel", onclick: () => cancelJob(id) }));
  $("#queue").prepend(row);
  return row;
}

function follow(id, { what, events }) {
  if (state.jobs.has(id)) return;
  const row = jobRow(id, what);
  const job = { id, row, source: null };
  state.jobs.set(id, job);
  const source = new EventSource(events || `/api/jobs/${id}/events`);
  job.source = source;
  const on = (name, handle) => source.addEventListener(name, message => handle(JSON.parse(message.data)));
  on("queued", () => setJob(row, "queued", "queued"));
  on("started", data => setJob(row, "running", `running · ${data.images_done}/${data.images_total} images`));
  on("progress", data => {
    const bar = $("progress", row);
    if (data.total_steps) { bar.max = data.total_steps; bar.value = data.step; }
    setJob(row, "running", data.total_steps ? `step ${data.step}/${data.total_steps}` :
      data.frames_total ? `frame ${data.frames_done}/${data.frames_total}` : "running");
    if (data.preview) { $("img.preview", row).src = data.preview; row.dataset.previews = String(Number(row.dataset.previews || 0) + 1); }
  });
  on("artifact", data => {
    $("img.preview", row).src = data.image_url;
    if (!data.grid) addResult({ id: data.artifact_id, image_url: data.image_url, prompt: what || "" }, true);
  });
  for (const final of ["succeeded", "failed", "cancelled"]) {
    on(final, data => {
      setJob(row, final, final === "failed" ? `failed: ${data.error}` : final);
      const bar = $("progress", row); bar.value = bar.max;
      $(".cancel", row).disabled = true;
      source.close();
      if (final === "succeeded" && data.grid_id) addResult({ id: data.grid_id, image_url: `/api/artifacts/${data.grid_id}/image`, prompt: "compare grid" }, true);
      if (job.onDone) job.onDone(final, data);
    });
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) setJob(row, row.dataset.status, $(".state", row).textContent); };
  return job;
}

function setJob(row, status, text) { row.dataset.status = status; $(".state", row).textContent = text; }

async function cancelJob(id) {
  const answer = await api("POST", `/api/jobs/${id}/cancel`);
  if (!answer.ok && answer.status !== 409) say(`cancel failed: ${answer.data && answer.data.detail}`);
}

async function loadQueue() {
  const answer = await api("GET", "/api/jobs?limit=10");
  if (!answer.ok) return;
  for (const job of answer.data.items.reverse()) {
    const what = job.request ? job.request.prompt : job.title || job.kind;
    if (job.status === "queued" || job.status === "running") follow(job.id, { what });
    else if (!state.jobs.has(job.id)) {
      const row = jobRow(job.id, what);
      setJob(row, job.status, job.status === "failed" ? `failed: ${job.error}` : job.status);
      $("progress", row).value = 1; $(".cancel", row).disabled = true;
      if (job.artifact_ids.length) $("img.preview", row).src = `/api/artifacts/${job.artifact_ids[0]}/image`;
      state.jobs.set(job.id, { id: job.id, row });
    }
  }
}

// ---- results: rendered since the page opened (first) and the recent ones -------------------------------

function thumb(item, fresh) {
  return el("div", { class: "thumb" + (fresh ? " new" : ""), dataset: { id: item.id }, draggable: true,
                     title: item.prompt, onclick: () => openLightbox(item.id),
                     ondragstart: event => event.dataTransfer.setData("text/x-echo-artifact", item.id) },
    el("img", { src: item.image_url, alt: item.prompt, loading: "lazy" }),
    el("div", { class: "cap", textContent: item.prompt }));
}

function addResult(item, fresh = false) {
  if ($(`#results .thumb[data-id="${item.id}"]`)) return;
  state.artifacts.set(item.id, item);
  const node = thumb(item, fresh);
  if (fresh) $("#results").prepend(node); else $("#results").append(node);
}

async function loadRecent() {
  const answer = await api("GET", "/api/artifacts?limit=24");
  if (answer.ok) for (const item of answer.data.items) if (item.kind !== "video") addResult(item);
}

// ---- the lightbox: the full image, its metadata and what to do with it -----------------------------------

async function openLightbox(id) {
  const answer = await api("GET", `/api/artifacts/${id}`);
  if (!answer.ok) { say(`artifact ${id.slice(0, 12)}: ${answer.data && answer.data.detail}`); return; }
  const item = answer.data, meta = item.meta || {};
  state.current = item;
  clearErrors($("#lightbox"));
  $("#lb-message").textContent = ""; $("#lb-message").className = "";
  $("#lb-img").src = item.image_url; $("#lb-img").alt = item.prompt;
  const rows = [["id", item.id.slice(0, 16)], ["prompt", item.prompt], ["negative", meta.negative_prompt],
    ["style", meta.style_name || meta.style], ["seed", item.seed], ["steps", meta.steps], ["cfg", meta.cfg],
    ["size", item.size], ["scheduler", meta.scheduler], ["model", item.model], ["engine", item.engine],
    ["project", item.project], ["scene", item.scene], ["strength", meta.strength],
    ["parent", item.parent_id ? item.parent_id.slice(0, 16) : null], ["created", item.created],
    ["scores", meta.scores ? Object.entries(meta.scores).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : v}`).join(" · ") : null]];
  $("#lb-meta").replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: String(v) })]));
  showRating(meta.rating ? meta.rating.value : null);
  $("#lb-refine-prompt").value = "";
  $("#lb-cli").textContent = cliCommand(item, meta);
  $("#lb-animate-cmd").textContent = `echo-os animate ${item.id.slice(0, 12)}`;
  $("#lb-style-name").value = "";
  $("#lb-video").hidden = true; $("#lb-video").removeAttribute("src");
  if (!$("#lightbox").open) $("#lightbox").showModal();
}

function cliCommand(item, meta) {
  const parts = ["echo-os", "render", shellQuote(item.prompt), "--seed", item.seed, "--steps", meta.steps, "--cfg", meta.cfg,
                 "--size", item.size];
  if (item.model) parts.push("--model", shellQuote(item.model));
  if (meta.scheduler) parts.push("--scheduler", meta.scheduler);
  if (meta.style_name) parts.push("--style", shellQuote(meta.style_name));
  else if (meta.style) parts.push("--style", shellQuote(meta.style));
  if (meta.negative_prompt) parts.push("--negative", shellQuote(meta.negative_prompt));
  if (item.project && item.project !== "default") parts.push("--project", shellQuote(item.project));
  if (meta.strength && item.parent_id) return `echo-os refine ${item.parent_id.slice(0, 12)} --strength ${meta.strength} --seed ${item.seed} --prompt ${shellQuote(item.prompt)}`;
  return parts.filter(p => p !== undefined && p !== null).join(" ");
}

function showRating(value) {
  $("#lb-rate").replaceChildren(...[1, 2, 3, 4, 5].map(n => el("button", {
    type: "button", title: `rate ${n}`, textContent: String(n), class: value === n ? "on" : "",
    onclick: () => rate(n) })));
}

function lbMessage(text, bad = false) { $("#lb-message").textContent = text; $("#lb-message").className = bad ? "bad" : ""; }

async function rate(value) {
  const answer = await api("POST", `/api/artifacts/${state.current.id}/rating`, { rating: value });
  if (answer.ok) { showRating(answer.data.value); lbMessage(`rated ${answer.data.value}`); }
  else lbMessage(`rating failed: ${JSON.stringify(answer.data && answer.data.detail)}`, true);
}

async function refine() {
  clearErrors($("#lightbox"));
  const body = { artifact_id: state.current.id, strength: Number($("#lb-strength").value) };
  const text = $("#lb-refine-prompt").value.trim();
  if (text) body.prompt = text;
  const answer = await api("POST", "/api/refine", body);
  if (!answer.ok) { showProblem(answer, { prefix: "lb-", fallback: "lb-prompt" }); return; }
  follow(answer.data.job_id, { what: `refine: ${text || state.current.prompt}`, events: answer.data.events_url });
  lbMessage(`refining: job ${answer.data.job_id.slice(0, 8)} in the queue`);
}

// Variations are one round of the evolve loop (POST /api/evolve, rounds 1): N candidates, scored with the
// scorer and the --best-of objective; the best is kept (marked in the results) unless none beat this image.
async function variations() {
  clearErrors($("#lightbox"));
  const item = state.current;
  const body = { target: item.id, rounds: 1, per_round: parseNumber($("#lb-variations").value, true), min_gain: 0,
                 scorer: $("#lb-scorer").value || "clip" };
  const objective = $("#lb-objective").value.trim();
  if (objective) body.objective = objective;
  $("#lb-vary-result").textContent = "";
  const answer = await api("POST", "/api/evolve", body);
  if (!answer.ok) { showProblem(answer, { prefix: "lb-", fallback: "lb-per_round" }); return; }
  const job = follow(answer.data.job_id, { what: `variations: ${item.prompt}`, events: answer.data.events_url });
  job.row.dataset.record = answer.data.record_url;
  lbMessage(`variations: job ${answer.data.job_id.slice(0, 8)} in the queue`);
  job.onDone = async final => {
    if (final !== "succeeded") return;
    const record = await api("GET", answer.data.record_url);
    if (!record.ok || !record.data.rounds.length) return;
    const round = record.data.rounds[0];
    for (const candidate of round.candidates) $(`#results .thumb[data-id="${candidate.id}"]`)?.classList.remove("best");
    const kept = round.best === round.parent ? "none beat the original: kept it" : `kept ${round.best.slice(0, 12)}`;
    const text = `best of ${round.candidates.length}: ${kept} (${round.best_score.toFixed(4)}, ${round.gain >= 0 ? "+" : ""}${round.gain.toFixed(4)} over the original)`;
    if (round.best !== round.parent) {
      addResult({ id: round.best, image_url: `/api/artifacts/${round.best}/image`, prompt: `best of ${round.candidates.length}` }, true);
      $(`#results .thumb[data-id="${round.best}"]`).classList.add("best");
    }
    if (state.current && state.current.id === item.id) $("#lb-vary-result").textContent = text;
    say(text);
  };
}

function listOf(id, numbers) {
  const text = $(id).value.trim();
  if (!text) return [];
  return text.split(",").map(s => s.trim()).filter(Boolean).map(s => numbers ? parseNumber(s, numbers === "int") : s);
}

async function compare() {
  clearErrors($("#lightbox"));
  const item = state.current, meta = item.meta || {};
  const body = { prompt: item.prompt, negative: meta.negative_prompt || "", size: item.size, project: item.project,
                 cfg: listOf("#lb-cmp-cfg", "float"), steps: listOf("#lb-cmp-steps", "int"),
                 seeds: listOf("#lb-cmp-seeds", "int"), styles: listOf("#lb-cmp-styles", false),
                 models: listOf("#lb-cmp-models", false), schedulers: listOf("#lb-cmp-schedulers", false),
                 engines: listOf("#lb-cmp-engines", false) };
  if (!body.models.length && item.model) body.models = [item.model];
  if (!body.schedulers.length && meta.scheduler) body.schedulers = [meta.scheduler];
  if (!body.cfg.length) body.cfg = [meta.cfg];
  if (!body.steps.length) body.steps = [meta.steps];
  if (!body.seeds.length) body.seeds = [item.seed];
  if (!body.styles.length && meta.style_name) body.styles = [meta.style_name];
  const answer = await api("POST", "/api/compare", body);
  if (!answer.ok) { showProblem(answer, { prefix: "lb-", fallback: "lb-compare" }); return; }
  follow(answer.data.job_id, { what: `compare: ${answer.data.cells} cells`, events: answer.data.events_url });
  lbMessage(`compare: ${answer.data.cells} cells in the queue; the grid sheet lands in the results`);
}

async function learnStyle() {
  clearErrors($("#lightbox"));
  const body = { ids: [state.current.id] };
  const name = $("#lb-style-name").value.trim();
  if (name) body.name = name;
  const answer = await api("POST", "/api/styles/learn", body);
  if (!answer.ok) { showProblem(answer, { prefix: "lb-", fallback: "lb-name", rename: { ids: "name" } }); return; }
  lbMessage(`learned style “${answer.data.name}”: ${answer.data.prompt}`);
  const styles = await api("GET", "/api/styles");
  if (styles.ok) {
    state.styles = styles.data;
    $("#f-style").replaceChildren(el("option", { value: "", textContent: "(none)" }),
      ...styles.data.map(s => el("option", { value: s.name, textContent: s.name })));
  }
}

async function animate() {
  clearErrors($("#lightbox"));
  const body = { artifact_id: state.current.id, model: $("#lb-animate-model").value.trim() || "svd" };
  const answer = await api("POST", "/api/animate", body);
  if (!answer.ok) { showProblem(answer, { prefix: "lb-", fallback: "lb-animate" }); return; }
  const job = follow(answer.data.job_id, { what: `animate: ${state.current.prompt}`, events: answer.data.events_url });
  lbMessage(`animating: job ${answer.data.job_id.slice(0, 8)} in the queue`);
  job.onDone = (final, data) => {
    if (final !== "succeeded" || !data.artifact_ids.length) return;
    const video = $("#lb-video");
    video.src = `/api/artifacts/${data.artifact_ids[0]}/video`; video.hidden = false;
  };
}

async function copyCommand() {
  const text = $("#lb-cli").textContent;
  try { await navigator.clipboard.writeText(text); lbMessage("copied"); }
  catch { const range = document.createRange(); range.selectNodeContents($("#lb-cli"));
          getSelection().removeAllRanges(); getSelection().addRange(range); lbMessage("selected: press Ctrl+C"); }
}

// ---- story view ----------------------------------------------------------------------------------------

async function openStory(event) {
  if (event) event.preventDefault();
  clearErrors($("#view-story"));
  const project = $("#story-project").value.trim();
  if (!project) { $('[data-error="story-project"]').textContent = "name a project"; return; }
  localStorage.setItem(SETTINGS_KEY + ":story", project);
  const answer = await api("GET", `/api/studio/story/${encodeURIComponent(project)}`);
  $("#story-cards").replaceChildren();
  if (!answer.ok) { showProblem(answer, { fallback: "story-project" }); $("#story-title").textContent = ""; return; }
  $("#story-title").textContent = `${answer.data.title} · ${answer.data.scenes.length} scenes`;
  for (const scene of answer.data.scenes) $("#story-cards").append(storyCard(answer.data.project, scene, answer.data.editable));
  state.ready.story = true;
}

function storyCard(project, scene, editor) {
  const kept = scene.artifacts[0];
  const card = el("div", { class: "card" + (scene.flags.length ? " flagged" : ""), dataset: { scene: scene.scene } },
    kept ? el("img", { src: `/api/artifacts/${kept}/image`, alt: scene.description, onclick: () => openLightbox(kept) }) : el("div", { class: "hint", textContent: "no image kept" }),
    el("div", { class: "body" },
      el("div", {}, el("span", { class: "num", textContent: `#${scene.scene}` }), " ", el("b", { textContent: scene.slug })),
      el("div", { class: "desc", textContent: scene.description }),
      scene.characters.length ? el("div", { class: "hint", textContent: scene.characters.join(", ") }) : null,
      ...scene.flags.map(f => el("div", { class: "flag", textContent: `drift: ${f.kind}${f.character ? " " + f.character : ""} ${Number(f.value).toFixed(3)} < ${f.threshold}` })),
      el("div", { class: "scores" }),
      scene.siblings.length ? el("div", { class: "siblings", textContent: `${scene.siblings.length} sibling${scene.siblings.length > 1 ? "s" : ""}` }) : null,
      scene.duration ? el("div", { class: "hint", textContent: `${scene.duration} s in the animatic` }) : null,
      el("div", { class: "actions" },
        kept ? el("button", { type: "button", textContent: "Refine…", onclick: () => openLightbox(kept) }) : null,
        kept ? el("button", { type: "button", textContent: "Regenerate", onclick: () => regenerate(kept, scene) }) : null),
      editor ? sceneEditor(project, scene) : null));
  if (kept) api("GET", `/api/artifacts/${kept}`).then(answer => {
    const scores = answer.ok && answer.data.meta && answer.data.meta.scores;
    const rating = answer.ok && answer.data.meta && answer.data.meta.rating;
    const parts = scores ? Object.entries(scores).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : v}`) : [];
    if (rating) parts.push("★".repeat(rating.value));
    $(".scores", card).textContent = parts.join(" · ");
  });
  return card;
}

function sceneEditor(project, scene) {
  const prefix = `scene-${scene.scene}-`;
  const description = el("textarea", { rows: 2, value: scene.description, dataset: { field: prefix + "description" } });
  const duration = el("input", { type: "number", step: "0.5", min: "0", placeholder: "seconds", value: scene.duration ?? "",
                                 dataset: { field: prefix + "duration" } });
  const save = async () => {
    clearErrors(editor);
    const body = {};
    if (description.value.trim() !== scene.description) body.description = description.value.trim();
    if (duration.value !== "" && Number(duration.value) !== scene.duration) body.duration = parseNumber(duration.value, false);
    const edited = await api("POST", `/api/studio/story/${encodeURIComponent(project)}/scenes/${scene.scene}`, body);
    if (!edited.ok) { showProblem(edited, { prefix, fallback: prefix + "description" }); return; }
    const written = edited.headers.get("X-Echo-Storyboard-Written");  // the story.csv the edit was written to
    if (written) {  // kept across the cards' refresh when the re-render ends
      state.written.set(`${project}/${scene.scene}`, `${written} updated (the text before: ${edited.headers.get("X-Echo-Storyboard-Backup")})`);
      editor.querySelector(".written").textContent = state.written.get(`${project}/${scene.scene}`);
    }
    const batch = Object.fromEntries(Object.entries(edited.data).filter(([, v]) => v !== null));
    const submitted = await api("POST", "/api/batch", batch);
    if (!submitted.ok) { showProblem(submitted, { prefix, fallback: prefix + "description" }); return; }
    const job = follow(submitted.data.job_id, { what: `${project}: scene ${scene.scene} edited`, events: submitted.data.events_url });
    job.onDone = final => { if (final === "succeeded" && $("#story-project").value.trim() === project) openStory(); };
    say(`scene ${scene.scene}: story.csv updated, re-rendering`);
  };
  const editor = el("details", { class: "edit" }, el("summary", { textContent: "Edit scene" }),
    el("label", { textContent: "Description" }), description, el("div", { class: "error", dataset: { error: prefix + "description" } }),
    el("label", { textContent: "Duration (s)" }), duration, el("div", { class: "error", dataset: { error: prefix + "duration" } }),
    el("button", { type: "button", class: "save", textContent: "Save & re-render this scene", onclick: save }),
    el("div", { class: "written", textContent: state.written.get(`${project}/${scene.scene}`) || "" }));
  return editor;
}

async function regenerate(kept, scene) {
  // The scene's own request with a new seed: its prompt as composed, in the same project.
  const answer = await api("GET", `/api/artifacts/${kept}`);
  if (!answer.ok) return;
  const item = answer.data, meta = item.meta || {};
  const body = { prompt: item.prompt, negative: meta.negative_prompt || "", size: item.size, steps: meta.steps,
                 cfg: meta.cfg, project: item.project, again: true };
  if (item.model) body.model = item.model;
  const submitted = await api("POST", "/api/render", body);
  if (submitted.ok) { follow(submitted.data.job_id, { what: `scene ${scene.scene}: ${scene.slug}`, events: submitted.data.events_url }); say(`scene ${scene.scene} regenerating`); }
  else say(`regenerate failed: ${JSON.stringify(submitted.data && submitted.data.detail)}`);
}

async function playAnimatic() {
  clearErrors($("#view-story"));
  const project = $("#story-project").value.trim();
  const answer = await api("POST", "/api/animatic", { project });
  if (!answer.ok) { showProblem(answer, { fallback: "story-project", rename: { project: "story-project" } }); return; }
  const job = follow(answer.data.job_id, { what: `animatic: ${project}`, events: answer.data.events_url });
  say(`animatic queued (${answer.data.frames} frames)`);
  job.onDone = (final, data) => {
    if (final !== "succeeded") return;
    const video = $("#animatic");
    video.src = `/api/artifacts/${data.artifact_ids[0]}/video`; video.hidden = false; video.play().catch(() => {});
  };
}

async function loadProjects() {
  const answer = await api("GET", "/api/artifacts?limit=200");
  if (!answer.ok) return;
  const names = [...new Set(answer.data.items.map(i => i.project))].sort();
  $("#project-list").replaceChildren(...names.map(name => el("option", { value: name })));
}

// ---- search ---------------------------------------------------------------------------------------------

function searchParams() {
  const params = new URLSearchParams({ k: "24" });
  for (const [name, id] of [["project", "#filter-project"], ["character", "#filter-character"], ["model", "#filter-model"], ["since", "#filter-since"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  if ($("#filter-rating").value) params.set("min_rating", $("#filter-rating").value);
  return params;
}

function showHits(answer) {
  state.ready.search = false;
  $("#search-results").replaceChildren();
  if (!answer.ok) { showProblem(answer, { fallback: "q" }); state.ready.search = true; return; }
  const hits = answer.data;  // the server applied every filter, the rating too (min_rating)
  for (const hit of hits) $("#search-results").append(thumb({ id: hit.id, image_url: hit.image_url, prompt: hit.score === null ? hit.prompt : `${hit.score.toFixed(2)} · ${hit.prompt}` }));
  say(`${hits.length} found`);
  state.ready.search = true;
}

async function searchText(event) {
  if (event) event.preventDefault();
  clearErrors($("#view-search"));
  const params = searchParams();
  if (!$("#search-q").value.trim()) {  // no words: browse the catalog, newest first, with the same filters
    params.delete("k"); params.delete("character"); params.set("limit", "24");  // (min_rating on the server)
    const answer = await api("GET", `/api/artifacts?${params}`);
    showHits(answer.ok ? { ok: true, data: answer.data.items.map(i => ({ ...i, score: null })) } : answer);
    return;
  }
  params.set("q", $("#search-q").value);
  showHits(await api("GET", `/api/memory/search?${params}`));
}

async function searchImage(file) {
  showView("search");
  clearErrors($("#view-search"));
  say("searching by image…");
  showHits(await api("POST", `/api/memory/search?${searchParams()}`, file));
}

// ---- the page: tabs, keys, drops -------------------------------------------------------------------------

function showView(name) {
  for (const view of $$(".view")) view.hidden = view.id !== `view-${name}`;
  for (const tab of $$(".tab")) tab.classList.toggle("on", tab.dataset.view === name);
  localStorage.setItem(SETTINGS_KEY + ":view", name);
}

function wireDrops() {
  let depth = 0;
  const hint = $("#drop-hint");
  document.addEventListener("dragenter", event => { if (event.dataTransfer.types.includes("Files")) { depth++; hint.hidden = false; } });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) hint.hidden = true; });
  document.addEventListener("dragover", event => event.preventDefault());
  document.addEventListener("drop", event => {
    event.preventDefault(); depth = 0; hint.hidden = true;
    const artifact = event.dataTransfer.getData("text/x-echo-artifact");
    if (artifact) { openLightbox(artifact).then(() => $("#lb-refine-prompt").focus()); return; }  // a studio result: refine it
    const file = [...event.dataTransfer.files].find(f => f.type.startsWith("image/"));
    if (file) searchImage(file);
  });
}

function wire() {
  $("#render-form").addEventListener("submit", submitRender);
  document.addEventListener("keydown", event => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      if ($("#lightbox").open) refine();
      else if (!$("#view-search").hidden) searchText();
      else submitRender();
    }
  });
  for (const tab of $$(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("#size-preset").addEventListener("change", () => { if ($("#size-preset").value) $("#f-size").value = $("#size-preset").value; saveSettings(); });
  $("#f-size").addEventListener("input", syncSizePreset);
  $("#f-style").addEventListener("change", showStyle);
  $("#f-model").addEventListener("change", showEngineWhy);
  $("#f-engine").addEventListener("change", showEngineWhy);
  $("#render-form").addEventListener("change", saveSettings);
  $("#preset-save").addEventListener("click", savePreset);
  $("#preset-pick").addEventListener("change", () => { const p = presets()[$("#preset-pick").value]; if (p) { applySettings(p); saveSettings(); } });
  $("#preset-delete").addEventListener("click", () => {
    const all = presets(); delete all[$("#preset-pick").value];
    localStorage.setItem(PRESETS_KEY, JSON.stringify(all)); showPresets(); });
  $("#lb-close").addEventListener("click", () => $("#lightbox").close());
  $("#lightbox").addEventListener("click", event => { if (event.target === $("#lightbox")) $("#lightbox").close(); });
  $("#lb-strength").addEventListener("input", () => { $("#lb-strength-out").textContent = $("#lb-strength").value; });
  $("#lb-refine").addEventListener("click", refine);
  $("#lb-vary").addEventListener("click", variations);
  $("#lb-compare").addEventListener("click", compare);
  $("#lb-learn").addEventListener("click", learnStyle);
  $("#lb-copy").addEventListener("click", copyCommand);
  $("#lb-animate").addEventListener("click", animate);
  $("#story-form").addEventListener("submit", openStory);
  $("#animatic-play").addEventListener("click", playAnimatic);
  $("#search-form").addEventListener("submit", searchText);
  wireDrops();
}

async function start() {
  wire();
  showPresets();
  await loadOptions();
  restoreSettings();
  const story = localStorage.getItem(SETTINGS_KEY + ":story");
  if (story) $("#story-project").value = story;
  showView(localStorage.getItem(SETTINGS_KEY + ":view") || "render");
  await Promise.all([loadRecent(), loadQueue(), loadProjects()]);
  document.body.dataset.ready = "true";
}

start();
