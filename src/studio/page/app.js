// orfeas studio page: uploads, the live job list (Server-Sent Events), and
// the detail panel (viewer, report, downloads). No framework: the page is
// small and must work offline from what the binary serves.

const token = document.querySelector('meta[name="orfeas-csrf"]').content;
const $ = (id) => document.getElementById(id);
const jobs = new Map();
let config = { max_upload_bytes: Infinity, models: [], default_model: 'inflate', viewer: false };
let selected = null;
let viewer = null;
let viewerShown = null;
// Picks by the person (clicks on a card) and drops (uploads): the newest
// drop's first job is shown unless the person picked a job since it began.
let picks = 0;
let drops = 0;
// When this page saw each job's current ETA (its own clock: the node's may differ).
const etaSeen = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function showError(code, message, name) {
  const item = el('li', { 'data-code': code }, el('strong', {}, name ? `${name}: ` : ''), message, ' ', el('code', {}, `(${code})`));
  $('errors').prepend(item);
  while ($('errors').children.length > 6) $('errors').lastChild.remove();
}

async function loadConfig() {
  try {
    const response = await fetch('/api/config');
    config = await response.json();
  } catch (e) {
    showError('unavailable', 'the studio did not answer; is it still running?');
  }
  const select = $('model');
  select.replaceChildren();
  const names = config.models.length ? config.models : [{ name: config.default_model, description: '' }];
  for (const m of names) select.append(el('option', { value: m.name, title: m.description, selected: m.name === config.default_model }, m.name));
  $('size_mm').placeholder = `${config.default_print_size_mm ?? 80} (default for STL/3MF)`;
}

function query(file) {
  const params = new URLSearchParams();
  params.set('name', file.name || 'image');
  params.set('model', $('model').value);
  const formats = [...document.querySelectorAll('input[name=format]:checked')].map((c) => c.value);
  params.set('formats', formats.join(','));
  for (const id of ['size_mm', 'faces', 'build_volume']) if ($(id).value.trim()) params.set(id, $(id).value.trim());
  params.set('colour', $('colour').checked ? '1' : '0');
  if ($('texture').checked) params.set('texture', '1');
  return params;
}

async function upload(file) {
  if (file.size > config.max_upload_bytes) {
    showError('too_large', `${bytes(file.size)} is over the limit of ${bytes(config.max_upload_bytes)}`, file.name);
    return;
  }
  let response;
  try {
    response = await fetch(`/api/jobs?${query(file)}`, {
      method: 'POST',
      headers: { 'X-Orfeas-Csrf': token, 'Content-Type': 'application/octet-stream' },
      body: file,
    });
  } catch (e) {
    showError('unavailable', `upload failed: ${e.message}`, file.name);
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || { code: `http_${response.status}`, message: response.statusText };
    showError(error.code, error.message, file.name);
    return;
  }
  upsert(body.job);
  return body.job;
}

// Uploads run side by side; the panel switches to the first file's job of
// this drop (or the next that was accepted) once it is accepted.
async function uploadAll(files) {
  const drop = ++drops;
  const picked = picks;
  const pending = [...files].map(upload);
  for (const job of pending) {
    const made = await job;
    if (!made) continue;
    if (drop === drops && picked === picks) select(made.id);
    return;
  }
}

function eta(job) {
  if (job.eta_ms == null || job.state === 'completed') return '';
  const seen = etaSeen.get(job.id);
  const from = seen && seen.key === `${job.eta_from_ms}:${job.eta_ms}` ? seen.at : Date.now();
  const left = Math.max(0, job.eta_ms - (Date.now() - from));
  return left < 1000 ? 'almost done' : `~${Math.ceil(left / 1000)} s left`;
}

// The ETA counts down from when this page first saw it, not from the node's
// clock, which may run ahead of or behind the browser's.
function noteEta(job) {
  const key = `${job.eta_from_ms}:${job.eta_ms}`;
  if (etaSeen.get(job.id)?.key !== key) etaSeen.set(job.id, { key, at: Date.now() });
}

function waited(job) {
  const s = Math.floor((Date.now() - job.created_ms) / 1000);
  return s < 1 ? '' : ` · waiting ${s} s`;
}

function stageText(job) {
  switch (job.state) {
    case 'submitted': return 'submitted';
    case 'queued': return (job.queue_position ? `queued, ${job.queue_position} ahead when accepted` : 'queued, next up') + waited(job);
    case 'running': return job.cancel_requested ? 'canceling…' : `${job.stage ?? 'running'} · ${job.percent}%`;
    case 'completed': return job.mesh ? `${job.mesh.faces.toLocaleString()} faces` : 'done';
    default: return job.state;
  }
}

function card(job) {
  const running = !['completed', 'failed', 'canceled'].includes(job.state);
  const cancel = running && !job.cancel_requested ? el('button', { type: 'button', class: 'cancel', textContent: 'Cancel' }) : null;
  if (cancel) cancel.addEventListener('click', (e) => { e.stopPropagation(); cancelJob(job.id, cancel); });
  const node = el('li', { class: `job${selected === job.id ? ' selected' : ''}`, 'data-job-id': job.id, 'data-state': job.state, 'data-stages': job.stages_seen.join(','), 'data-percent': String(job.percent) },
    el('div', { class: 'top' }, el('span', { class: 'name', title: job.name }, job.name), el('span', { class: `badge ${job.state}` }, job.state)),
    el('div', { class: 'bar' }, el('span')),
    el('div', { class: 'line' }, el('span', { class: 'stage' }, stageText(job)), el('span', { class: 'eta' }, eta(job))),
    el('div', { class: 'line' }, el('span', {}, `${job.model} · ${job.formats.join(', ')}${job.size_mm ? ` · ${job.size_mm} mm${job.size_defaulted ? ' (default)' : ''}` : ''}`), cancel),
    job.error ? el('div', { class: 'error', 'data-code': job.error.code }, `${job.error.message} (${job.error.code})`) : null);
  // Set through the CSSOM, which the CSP allows (a style attribute in markup it would not).
  node.querySelector('.bar > span').style.width = `${job.percent}%`;
  node.addEventListener('click', () => { picks++; select(job.id); });
  return node;
}

function renderList() {
  const list = $('jobs');
  const ordered = [...jobs.values()].sort((a, b) => b.created_ms - a.created_ms);
  list.replaceChildren(...ordered.map(card));
  $('empty').hidden = ordered.length > 0;
}

function upsert(job) {
  const before = jobs.get(job.id);
  // A stale answer (the POST's) must not undo what the feed already said.
  if (before && before.stages_seen.length > job.stages_seen.length) return;
  jobs.set(job.id, job);
  noteEta(job);
  renderList();
  if (selected === job.id) renderDetail(job);
}

async function cancelJob(id, button) {
  button.disabled = true;
  button.textContent = 'Canceling…';
  const response = await fetch(`/api/jobs/${id}/cancel`, { method: 'POST', headers: { 'X-Orfeas-Csrf': token } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    showError(body.error?.code ?? `http_${response.status}`, body.error?.message ?? 'cancel failed');
    button.disabled = false;
    button.textContent = 'Cancel';
  }
}

function select(id) {
  selected = id;
  renderList();
  renderDetail(jobs.get(id));
}

// One viewer for the page: concurrent renders share the one being made.
let viewerStarting = null;
function ensureViewer() {
  if (!config.viewer) return Promise.resolve(null);
  viewerStarting ??= import('/viewer.js').then(({ Viewer }) => {
    viewer = new Viewer($('viewer'));
    // For people debugging the page from the console (and the browser test).
    window.orfeasViewer = viewer;
    return viewer;
  }).catch((e) => {
    $('viewer-note').hidden = false;
    $('viewer-note').textContent = `The 3D viewer could not start: ${e.message}`;
    return null;
  });
  return viewerStarting;
}

async function renderDetail(job) {
  if (!job) return;
  $('detail').hidden = false;
  $('detail-title').textContent = job.name;
  $('report').replaceChildren(...job.words.map((line) => el('li', { class: line.level }, line.text)));
  if (job.state !== 'completed') {
    $('report').replaceChildren(el('li', { class: job.error ? 'bad' : 'warn' }, job.error ? `No model: ${job.error.message}` : 'The report appears when the model is done.'));
  }
  $('stats').textContent = job.mesh ? `${job.mesh.vertices.toLocaleString()} vertices, ${job.mesh.faces.toLocaleString()} faces, ${job.mesh.components} piece(s)` : '';
  $('downloads').replaceChildren(...job.files.map((f) => el('li', {}, el('a', { href: f.url, download: f.name, 'data-format': f.format, 'data-sha256': f.sha256 }, f.name), ` ${f.format.toUpperCase()} · ${bytes(f.bytes)}`)));
  $('previews').replaceChildren(...job.previews.map((p) => el('figure', {}, el('img', { src: p.url, alt: `${p.view} preview`, loading: 'lazy' }), el('figcaption', {}, p.view))));
  if (!config.viewer) {
    $('viewer-note').hidden = false;
    $('viewer-note').textContent = 'The 3D viewer is not installed on this server (deploy/setup.sh --studio installs three.js). Previews and downloads still work.';
    return;
  }
  const glb = job.files.find((f) => f.format === 'glb');
  const v = await ensureViewer();
  if (!v) return;
  if (selected !== job.id) return; // another job was picked meanwhile
  const note = (text) => { $('viewer-note').hidden = !text; $('viewer-note').textContent = text; };
  if (glb && viewerShown !== glb.url) {
    viewerShown = glb.url;
    note('');
    try {
      // A load that another job's overtook must not replace it when it ends.
      await v.show(glb.url, () => viewerShown === glb.url);
      v.setWireframe($('wireframe').checked);
      v.setColour($('show-colour').checked);
    } catch (e) {
      if (viewerShown === glb.url) note(`The model could not be shown: ${e.message}`);
    }
  } else if (!glb) {
    viewerShown = null;
    v.clear();
    note(['failed', 'canceled'].includes(job.state) ? 'This job made no model.' : 'The 3D model appears here when the job is done.');
  }
}

function connect() {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => { $('connection').dataset.state = 'open'; $('connection').textContent = 'live'; document.body.dataset.sse = 'open'; });
  source.addEventListener('error', () => { $('connection').dataset.state = 'closed'; $('connection').textContent = 'reconnecting…'; });
  source.addEventListener('snapshot', (e) => {
    const all = JSON.parse(e.data).jobs;
    for (const job of all) { jobs.set(job.id, job); noteEta(job); }
    // A fresh page shows the newest job (e.g. after a reload, or the jobs
    // `generate --studio` made before the page was opened).
    if (!selected && all.length) selected = all.reduce((a, b) => (b.created_ms > a.created_ms ? b : a)).id;
    renderList();
    if (selected) renderDetail(jobs.get(selected));
  });
  source.addEventListener('job', (e) => upsert(JSON.parse(e.data)));
}

function wireDrop() {
  const drop = $('drop');
  for (const name of ['dragenter', 'dragover']) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add('over'); });
  for (const name of ['dragleave', 'drop']) drop.addEventListener(name, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); uploadAll(e.dataTransfer.files); });
  // A file dropped beside the zone must not navigate away from the page.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  $('files').addEventListener('change', (e) => { uploadAll(e.target.files); e.target.value = ''; });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('files').click(); } });
}

$('wireframe').addEventListener('change', (e) => viewer?.setWireframe(e.target.checked));
$('show-colour').addEventListener('change', (e) => viewer?.setColour(e.target.checked));
$('reset-view').addEventListener('click', () => viewer?.reset());
setInterval(() => { for (const node of document.querySelectorAll('.job')) { const job = jobs.get(node.dataset.jobId); if (job) node.querySelector('.eta').textContent = eta(job); } }, 1000);
wireDrop();
await loadConfig();
connect();
document.body.dataset.ready = '1';
