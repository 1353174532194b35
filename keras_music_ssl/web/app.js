// The browser tagger: a keras_music_ssl ONNX tagger export (clips.onnx, track.onnx,
// keras_music_ssl.json) run by onnxruntime-web's WASM backend on a user's audio file.
//
// The contract (docs/web.md; the same numbers as the Python side): for a mono waveform x of
// n >= 1 samples at the model's rate (16 kHz), clip L = clip_samples, hop H = round(hop * rate):
//   - track tags: track.onnx's `probabilities` on x as decoded (the graph peak-normalises it,
//     zero-pads it to whole clips and averages the clips' embeddings before the head);
//   - timeline: x peak-normalised (x / max|x|, silence left as is; when the metadata says
//     `normalize`), windows starting at s_i = i*H while s_i < n, window i = x[s_i : s_i + L]
//     zero-padded at the end to L, from s_i / rate to min(s_i + L, n) / rate seconds, scored
//     by clips.onnx's `probabilities` (windows run in batches);
//   - decisions: with `thresholds` in the metadata (aligned with `tags`), a tag is on when its
//     track probability >= its threshold.
// The results are left on `window.kmsslResult` and `document.body.dataset.state` says where the
// page is: loading, ready, working, done or error (for scripts and tests).

const ORT_VERSION = '1.31.1';  // the onnxruntime-web this page is written and tested against
const BATCH = 8;  // windows per clips.onnx call
const params = new URLSearchParams(location.search);
const MODEL_URL = folderUrl(params.get('model') || './model/');
const ORT_URL = folderUrl(params.get('ort') || './ort/');

const $ = (id) => document.getElementById(id);
const page = {
  ort: null, meta: null, clips: null, track: null,  // set by loadModel()
  audio: null,  // {name, samples: Float32Array, channels}
  result: null,
  busy: false,
};
window.kmsslRuns = 0;  // incremented at the end of every run, done or failed

class UserError extends Error {}

function folderUrl(text) {
  const url = new URL(text, location.href);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

function setState(state) {
  document.body.dataset.state = state;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  $('progress-line').hidden = true;
  setState('error');
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function progress(fraction, text) {
  $('progress-line').hidden = false;
  $('progress').value = fraction;
  $('status').textContent = text;
}

// --- the model ------------------------------------------------------------------------------

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new UserError(`Could not fetch ${what} from ${url}: ${error.message}`);
  }
  if (!response.ok) {
    throw new UserError(`No ${what} at ${url} (HTTP ${response.status}): the model folder must be an ONNX ` +
                        'export of keras_music_ssl (kmssl export --format onnx).');
  }
  return response;
}

function checkMetadata(meta, url) {
  const problems = [];
  if (meta === null || typeof meta !== 'object') throw new UserError(`${url} is not a JSON object.`);
  if (meta.kind !== 'tagger') {
    throw new UserError(`The model at ${MODEL_URL} is ${meta.kind === 'embedder' ? 'an embedder' : `of kind ${JSON.stringify(meta.kind)}`}, ` +
                        'not a tagger: export an encoder with a probe head (kmssl export --head ...) to tag music.');
  }
  if (!Array.isArray(meta.tags) || !meta.tags.length || !meta.tags.every((t) => typeof t === 'string')) problems.push('tags');
  for (const key of ['sample_rate', 'clip_samples']) {
    if (!Number.isInteger(meta[key]) || meta[key] <= 0) problems.push(key);
  }
  if ('thresholds' in meta && meta.thresholds !== null) {
    const t = meta.thresholds;
    if (!Array.isArray(t) || t.length !== (meta.tags || []).length || !t.every((v) => typeof v === 'number' && Number.isFinite(v))) {
      problems.push('thresholds (not one number per tag)');
    }
  }
  if (problems.length) throw new UserError(`${url}: damaged metadata (${problems.join(', ')}).`);
  return meta;
}

async function loadOrt() {
  let ort;
  try {
    ort = await import(new URL('ort.wasm.min.mjs', ORT_URL).href);
  } catch (error) {
    throw new UserError(`Could not load onnxruntime-web ${ORT_VERSION} from ${ORT_URL} (${error.message}). ` +
                        'kmssl serve-demo serves it at ./ort/; elsewhere, pass ?ort=URL of its dist/ folder.');
  }
  ort.env.wasm.numThreads = 1;  // no SharedArrayBuffer: no cross-origin isolation headers needed
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = ORT_URL.href;
  ort.env.logLevel = 'error';
  return ort;
}

async function session(ort, file) {
  const url = new URL(file, MODEL_URL);
  const bytes = new Uint8Array(await (await fetchOk(url, file)).arrayBuffer());
  try {
    return await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  } catch (error) {
    throw new UserError(`${url} is not an ONNX model onnxruntime-web can run: ${error.message || error}`);
  }
}

async function loadModel() {
  const metaUrl = new URL('keras_music_ssl.json', MODEL_URL);
  const response = await fetchOk(metaUrl, 'keras_music_ssl.json');
  let meta;
  try {
    meta = JSON.parse(await response.text());
  } catch (error) {
    throw new UserError(`${metaUrl} is not valid JSON (${error.message}): not an export of keras_music_ssl?`);
  }
  page.meta = checkMetadata(meta, metaUrl);
  page.ort = await loadOrt();
  [page.clips, page.track] = [await session(page.ort, 'clips.onnx'), await session(page.ort, 'track.onnx')];
  for (const [name, s, outputs] of [['clips.onnx', page.clips, ['probabilities']], ['track.onnx', page.track, ['probabilities']]]) {
    if (!s.inputNames.includes('waveform') || outputs.some((o) => !s.outputNames.includes(o))) {
      throw new UserError(`${name} has inputs ${s.inputNames} and outputs ${s.outputNames}: not a keras_music_ssl tagger.`);
    }
  }
  const hop = Number(params.get('hop'));
  $('hop').value = hop > 0 ? String(hop) : String(page.meta.clip_samples / page.meta.sample_rate);
  const rows = Number(params.get('rows'));
  $('rows').value = String(Number.isInteger(rows) && rows > 0 ? rows : Math.min(10, page.meta.tags.length));
  const t = page.meta.thresholds ? `, ${page.meta.thresholds.length} tuned thresholds` : '';
  $('model-info').textContent = `Model: ${MODEL_URL.pathname} · ${page.meta.tags.length} tags · ` +
    `${page.meta.clip_samples / page.meta.sample_rate} s clips at ${page.meta.sample_rate / 1000} kHz${t} · ` +
    `onnxruntime-web ${ORT_VERSION} (WASM)`;
}

// --- the audio ------------------------------------------------------------------------------

async function decode(file) {
  const bytes = await file.arrayBuffer();
  // decodeAudioData resamples to its context's rate: a context at the model's rate leaves a file
  // of that rate as it is and resamples any other with the browser's resampler.
  const context = new OfflineAudioContext(1, 1, page.meta.sample_rate);
  let buffer;
  try {
    buffer = await context.decodeAudioData(bytes);
  } catch (error) {
    throw new UserError(`Could not decode ${file.name}: not an audio file this browser can read` +
                        `${error && error.message ? ` (${error.message})` : ''}.`);
  }
  if (!buffer.length) throw new UserError(`${file.name} holds no samples: nothing to tag.`);
  const channels = buffer.numberOfChannels;
  let samples;
  if (channels === 1) {
    samples = buffer.getChannelData(0).slice();
  } else {  // mono: the mean of the channels
    samples = new Float32Array(buffer.length);
    for (let c = 0; c < channels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < samples.length; i++) samples[i] += data[i];
    }
    for (let i = 0; i < samples.length; i++) samples[i] /= channels;
  }
  for (let i = 0; i < samples.length; i++) {
    if (!Number.isFinite(samples[i])) throw new UserError(`${file.name} decodes to NaN or infinite samples.`);
  }
  return { name: file.name, samples, channels };
}

export function peakNormalize(x) {
  let peak = 0;
  for (let i = 0; i < x.length; i++) peak = Math.max(peak, Math.abs(x[i]));
  if (!(peak > 0)) return x;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] / peak;
  return out;
}

export function windowStarts(n, hop) {
  const starts = [];
  for (let s = 0; s < n; s += hop) starts.push(s);
  return starts;
}

function hopSamples() {
  const seconds = Number($('hop').value);
  const hop = Math.round(seconds * page.meta.sample_rate);
  if (!Number.isFinite(seconds) || hop < 1) {
    throw new UserError(`The timeline hop must be a positive number of seconds, got ${JSON.stringify($('hop').value)}.`);
  }
  return hop;
}

async function tag(audio) {
  const { ort, meta } = page;
  const rate = meta.sample_rate, L = meta.clip_samples, tags = meta.tags;
  const x = audio.samples, n = x.length;
  const H = hopSamples();
  const starts = windowStarts(n, H);
  const batches = Math.ceil(starts.length / BATCH);
  const steps = 1 + batches;

  progress(0, 'Track tags…');
  await nextFrame();
  const trackOut = await page.track.run({ waveform: new ort.Tensor('float32', x, [n]) }, ['probabilities']);
  const track = Array.from(trackOut.probabilities.data);

  const normalized = meta.normalize === false ? x : peakNormalize(x);
  const windows = [];
  for (let b = 0; b < batches; b++) {
    progress((1 + b) / steps, `Timeline: windows ${b * BATCH + 1}–${Math.min((b + 1) * BATCH, starts.length)} of ${starts.length}…`);
    await nextFrame();
    const part = starts.slice(b * BATCH, (b + 1) * BATCH);
    const input = new Float32Array(part.length * L);  // zeros: the padding of a window past the end
    part.forEach((s, j) => input.set(normalized.subarray(s, Math.min(s + L, n)), j * L));
    const out = await page.clips.run({ waveform: new ort.Tensor('float32', input, [part.length, L]) }, ['probabilities']);
    const p = out.probabilities.data, k = tags.length;
    part.forEach((s, j) => windows.push({
      start: s / rate, end: Math.min(s + L, n) / rate, probabilities: Array.from(p.subarray(j * k, (j + 1) * k)),
    }));
  }
  const thresholds = Array.isArray(meta.thresholds) ? meta.thresholds : null;
  const decisions = thresholds ? track.map((p, i) => p >= thresholds[i]) : null;
  return {
    file: audio.name, channels: audio.channels, sampleRate: rate, samples: n, duration: n / rate,
    clipSamples: L, hopSamples: H, hopSeconds: H / rate, normalize: meta.normalize !== false,
    tags, track, thresholds, decisions, onTags: decisions ? tags.filter((_, i) => decisions[i]) : null,
    windows, model: MODEL_URL.href, onnxruntimeWeb: ORT_VERSION,
  };
}

function nextFrame() {  // lets the page paint the progress between model calls
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}

// --- showing the results --------------------------------------------------------------------

function topRows(result) {
  const count = Math.max(1, Math.min(result.tags.length, Math.floor(Number($('rows').value)) || 10));
  return result.tags.map((_, i) => i).sort((a, b) => result.track[b] - result.track[a]).slice(0, count);
}

function formatTime(seconds, step = 1) {
  const digits = step < 1 ? 1 : 0;
  if (seconds < 60) return `${seconds.toFixed(digits)} s`;
  const m = Math.floor(seconds / 60), s = seconds - 60 * m;
  return `${m}:${s.toFixed(digits).padStart(2 + (digits ? 2 : 0), '0')}`;
}

function showResult(result) {
  $('results').hidden = false;
  const channels = result.channels === 1 ? 'mono' : `${result.channels} channels mixed to mono`;
  $('track-info').textContent = `· ${result.file}, ${formatTime(result.duration, 0.1)}, ${channels}`;
  const list = $('track-tags');
  list.replaceChildren();
  for (const i of topRows(result)) {
    const item = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'tag';
    name.textContent = result.tags[i];
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.setProperty('--p', String(result.track[i]));
    const value = document.createElement('span');
    value.className = 'value';
    value.textContent = result.track[i].toFixed(3);
    item.append(name, bar, value);
    if (result.decisions) {
      item.classList.add(result.decisions[i] ? 'on' : 'off');
      value.textContent += ` ${result.decisions[i] ? '≥' : '<'} ${result.thresholds[i].toFixed(3)}`;
    }
    list.append(item);
  }
  const decisions = $('decisions');
  decisions.hidden = !result.decisions;
  if (result.decisions) {
    decisions.textContent = result.onTags.length
      ? `On (probability ≥ the tag's tuned threshold): ${result.onTags.join(', ')}`
      : 'No tag reaches its tuned threshold.';
  }
  $('timeline-info').textContent = `· ${result.windows.length} window${result.windows.length === 1 ? '' : 's'} of ` +
    `${result.clipSamples / result.sampleRate} s every ${+result.hopSeconds.toFixed(4)} s`;
  drawTimeline(result);
}

// viridis at 0, 0.25, 0.5, 0.75, 1 (matplotlib), linearly interpolated
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(p) {
  const t = Math.min(1, Math.max(0, p)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i;
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(',')})`;
}

const LAYOUT = { left: 140, right: 70, top: 10, bottom: 34, row: 22 };

function drawTimeline(result) {
  const canvas = $('timeline');
  const rows = topRows(result);
  const width = Math.max(480, canvas.parentElement.clientWidth || 900);
  const height = LAYOUT.top + rows.length * LAYOUT.row + LAYOUT.bottom;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const plotW = width - LAYOUT.left - LAYOUT.right;
  const duration = result.duration;
  const x = (t) => LAYOUT.left + (t / duration) * plotW;
  g.fillStyle = '#f2f2f2';
  g.fillRect(LAYOUT.left, LAYOUT.top, plotW, rows.length * LAYOUT.row);
  // each window is drawn over its own hop (or its own span when the hop is longer than a clip)
  result.windows.forEach((w, j) => {
    const until = Math.min(w.end, w.start + result.hopSeconds);
    const x0 = x(w.start), x1 = Math.max(x(until), x0 + 1);
    rows.forEach((tagIndex, r) => {
      g.fillStyle = colour(w.probabilities[tagIndex]);
      g.fillRect(x0, LAYOUT.top + r * LAYOUT.row, x1 - x0 + 0.5, LAYOUT.row);
    });
  });
  // tag names
  g.fillStyle = '#222';
  g.font = '13px system-ui, sans-serif';
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  rows.forEach((tagIndex, r) => {
    const label = result.decisions && result.decisions[tagIndex] ? `● ${result.tags[tagIndex]}` : result.tags[tagIndex];
    g.fillText(label, LAYOUT.left - 8, LAYOUT.top + (r + 0.5) * LAYOUT.row, LAYOUT.left - 12);
  });
  // time axis
  const bottom = LAYOUT.top + rows.length * LAYOUT.row;
  const steps = [0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600];
  const step = steps.find((s) => duration / s <= Math.max(2, plotW / 80)) || 3600;
  g.textAlign = 'center';
  g.textBaseline = 'top';
  g.strokeStyle = '#555';
  g.beginPath();
  g.moveTo(LAYOUT.left, bottom + 0.5);
  g.lineTo(LAYOUT.left + plotW, bottom + 0.5);
  for (let t = 0; t <= duration + 1e-9; t += step) {
    g.moveTo(Math.round(x(t)) + 0.5, bottom);
    g.lineTo(Math.round(x(t)) + 0.5, bottom + 5);
    g.fillText(formatTime(t, step), x(t), bottom + 8);
  }
  g.stroke();
  // colour bar
  const barX = LAYOUT.left + plotW + 18, barH = rows.length * LAYOUT.row;
  for (let k = 0; k < barH; k++) {
    g.fillStyle = colour(1 - k / Math.max(1, barH - 1));
    g.fillRect(barX, LAYOUT.top + k, 12, 1);
  }
  g.textAlign = 'left';
  g.textBaseline = 'top';
  g.fillStyle = '#222';
  g.fillText('1', barX + 16, LAYOUT.top);
  g.textBaseline = 'bottom';
  g.fillText('0', barX + 16, LAYOUT.top + barH);
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const px = event.clientX - box.left, py = event.clientY - box.top;
    const r = Math.floor((py - LAYOUT.top) / LAYOUT.row);
    const t = ((px - LAYOUT.left) / plotW) * duration;
    const j = result.windows.findLastIndex((w) => w.start <= t);
    if (r < 0 || r >= rows.length || t < 0 || t > duration || j < 0) {
      $('hover').innerHTML = '&nbsp;';
      return;
    }
    const w = result.windows[j];
    $('hover').textContent = `${result.tags[rows[r]]}: ${w.probabilities[rows[r]].toFixed(3)} ` +
      `(window ${j + 1}, ${w.start.toFixed(2)}–${w.end.toFixed(2)} s)`;
  };
}

function csvField(text) {
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function timelineCsv(result) {
  const lines = [['start_s', 'end_s', ...result.tags].map(csvField).join(',')];
  for (const w of result.windows) lines.push([w.start, w.end, ...w.probabilities].join(','));
  return lines.join('\n') + '\n';
}

function download(text, type, suffix) {
  const stem = (page.result.file || 'audio').replace(/\.[^.]*$/, '');
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = `${stem}.${suffix}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// --- wiring ---------------------------------------------------------------------------------

async function run(task) {
  if (page.busy) return;
  page.busy = true;
  clearError();
  setState('working');
  try {
    await task();
    $('progress-line').hidden = true;
    setState('done');
  } catch (error) {
    console.error(error);
    showError(error instanceof UserError ? error.message : `Unexpected error: ${error && error.message ? error.message : error}`);
  } finally {
    page.busy = false;
    window.kmsslRuns += 1;
  }
}

async function tagAndShow() {
  page.result = null;
  window.kmsslResult = null;
  page.result = await tag(page.audio);
  window.kmsslResult = page.result;
  showResult(page.result);
}

function openFile(file) {
  if (!file || !page.meta || page.busy) return;
  run(async () => {
    page.audio = null;
    page.result = null;
    window.kmsslResult = null;
    $('results').hidden = true;
    progress(0, `Decoding ${file.name}…`);
    page.audio = await decode(file);
    await tagAndShow();
  });
}

function wire() {
  $('file').addEventListener('change', (event) => openFile(event.target.files[0]));
  const drop = $('drop');
  for (const name of ['dragenter', 'dragover']) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add('over'); });
  }
  for (const name of ['dragleave', 'drop']) drop.addEventListener(name, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    openFile(event.dataTransfer.files[0]);
  });
  $('hop').addEventListener('change', () => { if (page.audio) run(tagAndShow); });
  $('rows').addEventListener('change', () => { if (page.result) showResult(page.result); });
  $('download-csv').addEventListener('click', () => download(timelineCsv(page.result), 'text/csv', 'timeline.csv'));
  $('download-json').addEventListener('click', () => download(JSON.stringify(page.result, null, 1), 'application/json', 'tags.json'));
  window.addEventListener('resize', () => { if (page.result) drawTimeline(page.result); });
}

async function main() {
  wire();
  $('file').disabled = true;
  try {
    await loadModel();
    $('file').disabled = false;
    setState('ready');
  } catch (error) {
    console.error(error);
    $('model-info').textContent = 'No model loaded.';
    showError(error instanceof UserError ? error.message : `Could not load the model: ${error && error.message ? error.message : error}`);
  }
}

main();
