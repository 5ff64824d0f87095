// m2mgw operator console: one page with hash routes over the admin API, kept live by
// Server-Sent Events (GET /events). Everything that came from the gateway or a
// terminal enters the page as text (text nodes, textContent), never as markup.

const PAGE = 50; // rows per page of a listing: the server pages, the page never holds all
const HISTORY = 150; // rate samples kept for the chart: 5 minutes of 2-second stats
const FINAL = new Set(['succeeded', 'failed', 'expired', 'cancelled']);
const GOOD = new Set(['LOGGED_IN', 'succeeded']);
const BAD = new Set(['failed', 'expired', 'OFFLINE']);
const WAIT = new Set(['queued', 'sent', 'pending']);
// REMOTE_CTRL codes of spec table 3.6.1 (the gateway checks them again).
const REMOTE_CODES = [
  'SUSPEND', 'RESUME', 'REBOOT', 'REQUEST_LOGIN', 'REPORT_STATISTICS', 'RESET_STATISTICS',
  'REPORT_MONITORING', 'UPLOAD_DATA', 'REPORT_COMM_SETTINGS', 'PLATFORM_APN',
  'FACTORY_RESET', 'REPORT_SYNC_TAGS', 'APPLICATION_APN', 'RELOGIN_ENCRYPTED',
];

const live = { authenticated: false, source: null, retry: null, stats: null, previous: null, samples: [] };
let view = null; // the page shown: optional stats/terminal/request handlers and leave()

// --- DOM and formatting -------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes, never markup. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function mount(template) {
  $('main').replaceChildren($(template).content.cloneNode(true));
}

const pad = (n) => String(n).padStart(2, '0');

function when(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const d = new Date(seconds * 1000);
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return el('span', { class: 'time', title: `${duration(Date.now() / 1000 - seconds)} ago` }, text);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

const rate = (r) => (r >= 10 ? r.toFixed(0) : r.toFixed(1));

function pill(state) {
  const text = state === null || state === undefined ? '–' : String(state);
  const kind = GOOD.has(text) ? 'good' : BAD.has(text) ? 'bad' : WAIT.has(text) ? 'wait' : '';
  return el('span', { class: `pill ${kind}` }, text);
}

/** A cell's content by its column's key: times, states, flags and nested values. */
function cell(key, value) {
  if (value === null || value === undefined || value === '') return '–';
  if (typeof value === 'number' && (key.endsWith('_at') || key === 'last_seen' || key === 'time')) return when(value);
  if (key === 'state') return pill(value);
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** A table of ``items``; ``columns`` are [key, label, render?] (default: the first item's keys). */
function table(items, columns) {
  if (!items.length) return el('p', { class: 'empty' }, 'None.');
  const cols = columns ?? Object.keys(items[0]).map((key) => [key, key.replaceAll('_', ' ')]);
  return el('table', {},
    el('thead', {}, el('tr', {}, cols.map(([, label]) => el('th', {}, label)))),
    el('tbody', {}, items.map((item) => row(item, cols))));
}

function row(item, cols) {
  return el('tr', {}, cols.map(([key, , render]) =>
    el('td', { class: typeof item[key] === 'string' && item[key].length > 24 ? 'wrap' : null },
      render ? render(item) : cell(key, item[key]))));
}

function facts(target, pairs) {
  $(target).replaceChildren(...pairs.flatMap(([label, value]) => [el('dt', {}, label), el('dd', {}, value)]));
}

function notice(text) {
  $('notice').textContent = text ?? '';
  $('notice').hidden = !text;
}

// --- the admin API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** One JSON call with the session cookie; a 401 anywhere but the log-in shows the log-in. */
async function api(path, { method = 'GET', body } = {}) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text.slice(0, 200) };
  }
  if (response.status === 401 && path !== '/session') loggedOut();
  if (!response.ok) throw new ApiError(response.status, data?.error ?? `${response.status} ${response.statusText}`);
  return data;
}

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== '' && v !== null && v !== undefined);
  return entries.length ? `?${new URLSearchParams(entries)}` : '';
}

/** Fill ``target`` with a table of ``path``'s items, or the error that prevented it. */
async function section(target, path, columns) {
  try {
    const data = await api(path);
    $(target)?.replaceChildren(table(data.items, columns));
  } catch (error) {
    if (error.status !== 401) $(target)?.replaceChildren(el('p', { class: 'error' }, error.message));
  }
}

// --- live updates -------------------------------------------------------------------------

function connectEvents() {
  if (live.source || !live.authenticated) return;
  const source = new EventSource('/events');
  live.source = source;
  source.onopen = () => setLive(true);
  source.onerror = () => {
    setLive(false);
    // CLOSED: the gateway refused the stream (a 401, say); the browser does not retry.
    if (source.readyState === EventSource.CLOSED) {
      live.source = null;
      retryEvents();
    }
  };
  for (const kind of ['stats', 'terminal', 'request']) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      if (kind === 'stats') record(data);
      view?.[kind]?.(data);
    });
  }
}

function retryEvents() {
  clearTimeout(live.retry);
  live.retry = setTimeout(() => api('/stats').then(connectEvents, (error) => {
    if (error.status !== 401) retryEvents();
  }), 5000);
}

function setLive(on) {
  $('live').classList.toggle('on', on);
  $('live').textContent = on ? 'live' : 'reconnecting';
}

/** Keep the latest stats and turn the cumulative message counters into rates, over the
 * gateway's clock (late events make no spike) and at least a second apart; a counter
 * that went back (the gateway restarted) gives 0, not a negative rate. */
function record(stats) {
  live.stats = stats;
  $('version').textContent = stats.version ? `m2mgw ${stats.version}` : '';
  const now = { t: stats.time, in: stats.messages.in, out: stats.messages.out };
  const before = live.previous;
  if (before && now.t - before.t < 1) return;
  if (before) {
    const dt = now.t - before.t;
    live.samples.push({ in: Math.max(0, (now.in - before.in) / dt), out: Math.max(0, (now.out - before.out) / dt) });
    if (live.samples.length > HISTORY) live.samples.shift();
  }
  live.previous = now;
}

// --- log-in -------------------------------------------------------------------------------

function loginView() {
  mount('login-view');
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('login-error').textContent = '';
    try {
      await api('/session', { method: 'POST', body: { token: $('token').value.trim() } });
      loggedIn(await api('/stats'));
    } catch (error) {
      $('login-error').textContent = error.status === 401 ? 'That token is not valid.' : error.message;
    }
  });
}

function loggedIn(stats) {
  live.authenticated = true;
  record(stats);
  for (const id of ['nav', 'logout', 'live']) $(id).hidden = false;
  setLive(false);
  connectEvents();
  route();
}

function loggedOut() {
  if (!live.authenticated && $('login-form')) return; // the log-in is already shown
  live.authenticated = false;
  live.source?.close();
  live.source = null;
  clearTimeout(live.retry);
  for (const id of ['nav', 'logout', 'live']) $(id).hidden = true;
  view?.leave?.();
  view = null;
  loginView();
}

// --- dashboard ----------------------------------------------------------------------------

const counts = (object, key) => Object.entries(object ?? {}).map(([name, n]) => ({ [key]: name.replaceAll('_', ' '), count: n }));
const APP_COLUMNS = [
  ['app_id', 'application'], ['connections', 'connections'], ['callback', 'callback'],
  ['backlog', 'undelivered'], ['kept', 'kept'], ['oldest_age', 'oldest', (a) => duration(a.oldest_age)],
];

function modemText(sms) {
  if (!sms) return 'SMS bearer off';
  const modem = sms.modem;
  if (!modem) return 'no modem';
  const dbm = modem.signal?.dbm;
  return `modem ${modem.up ? 'up' : 'DOWN'}${dbm === null || dbm === undefined ? '' : `, ${dbm} dBm`}`;
}

function dashboardView() {
  mount('dashboard-view');
  const chart = $('chart');
  const show = (stats) => {
    const t = stats.terminals;
    $('s-online').textContent = t.online.total;
    $('s-offline').textContent = t.known - t.online.total;
    $('s-known').textContent = t.known;
    const last = live.samples.at(-1);
    $('s-rate-in').textContent = last ? rate(last.in) : '–';
    $('s-rate-out').textContent = last ? rate(last.out) : '–';
    $('s-queue').textContent = stats.queue.depth;
    $('s-queue-age').textContent = stats.queue.oldest_age === null ? '' : `oldest ${duration(stats.queue.oldest_age)}`;
    $('s-sms').textContent = stats.sms ? stats.sms.outbox : '–';
    $('s-modem').textContent = modemText(stats.sms);
    $('s-backlog').textContent = stats.registry.pending_writes;
    $('s-rows').textContent = `${stats.registry.pending_rows} rows`;
    $('s-uptime').textContent = duration(stats.uptime);
    $('states').replaceChildren(table(counts(t.by_state, 'state'), [['state', 'state'], ['count', 'terminals']]));
    const { total, ...bearers } = t.online;
    $('bearers').replaceChildren(table(counts(bearers, 'bearer'), [['bearer', 'bearer'], ['count', 'online']]));
    $('refusals').replaceChildren(table(counts(stats.refusals, 'reason'), [['reason', 'reason'], ['count', 'count']]));
    $('apps').replaceChildren(table(stats.applications, APP_COLUMNS));
    const problems = stats.problems ?? [];
    $('problems').hidden = !problems.length;
    $('problems').replaceChildren(el('h2', {}, 'Problems'), el('ul', {}, problems.map((p) => el('li', {}, p))));
    drawChart(chart, live.samples);
  };
  const redraw = () => drawChart(chart, live.samples);
  window.addEventListener('resize', redraw);
  show(live.stats);
  return { stats: show, leave: () => window.removeEventListener('resize', redraw) };
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

/** Messages per second in and out, newest at the right, on a 2-D canvas. */
function drawChart(canvas, samples) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width) return;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  const css = getComputedStyle(document.documentElement);
  const [left, right, top, bottom] = [40, width - 8, 8, height - 20];
  const ceiling = niceCeiling(Math.max(0, ...samples.flatMap((s) => [s.in, s.out])));
  g.font = '11px system-ui, sans-serif';
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(bottom - f * (bottom - top)) + 0.5;
    g.strokeStyle = css.getPropertyValue('--line');
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(right, y);
    g.stroke();
    g.fillStyle = css.getPropertyValue('--muted');
    g.fillText(rate(ceiling * f), 4, y + 4);
  }
  g.fillText(`−${duration(HISTORY * 2)}`, left, height - 4);
  g.fillText('now', right - 20, height - 4);
  if (samples.length < 2) g.fillText('collecting rates from the live counters…', left + 12, (top + bottom) / 2);
  const step = (right - left) / (HISTORY - 1);
  g.lineWidth = 2;
  for (const key of ['in', 'out']) {
    g.strokeStyle = css.getPropertyValue(`--${key}`);
    g.beginPath();
    samples.forEach((s, i) => {
      const x = right - (samples.length - 1 - i) * step;
      const y = bottom - (s[key] / ceiling) * (bottom - top);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  }
}

// --- listings -----------------------------------------------------------------------------

/** Prev/next paging that follows the server's ``next`` links (offsets and cursors alike). */
function pager(render) {
  const before = []; // [path, count] of the pages before the one shown
  let current = null;
  let next = null;
  let ticket = 0;
  const show = async (path) => {
    const mine = ++ticket;
    const buttons = () => {
      $('prev').disabled = !before.length;
      $('next').disabled = !next;
    };
    $('prev').disabled = $('next').disabled = true;
    let page;
    try {
      page = await api(path);
    } catch (error) {
      if (error.status !== 401) notice(error.message);
      buttons();
      return;
    }
    if (mine !== ticket) return; // a later search overtook this one
    notice('');
    current = [path, page.items.length];
    next = page.next;
    render(page.items);
    const first = before.reduce((n, [, count]) => n + count, 0);
    const n = page.items.length;
    const total = page.total === undefined || page.total === null ? '' : ` of ${page.total}`;
    $('page-info').textContent = n ? `${first + 1}–${first + n}${total}` : '';
    buttons();
  };
  $('next').addEventListener('click', () => {
    if (!next || !current) return;
    before.push(current);
    show(next);
  });
  $('prev').addEventListener('click', () => {
    if (before.length) show(before.pop()[0]);
  });
  return {
    start(path) {
      before.length = 0;
      show(path);
    },
    reload() {
      if (current) show(current[0]);
    },
  };
}

const terminalLink = (t) => el('a', { href: `#/terminals/${encodeURIComponent(t.serial ?? t.imei)}` }, t.serial ?? `IMEI ${t.imei}`);
const TERMINAL_COLUMNS = [
  ['serial', 'serial', terminalLink], ['imei', 'IMEI'], ['msisdn', 'MSISDN'], ['state', 'state'],
  ['bearer', 'bearer'], ['address', 'address'], ['last_seen', 'last seen'],
  ['software_version', 'software'],
];

function terminalsView(params) {
  mount('terminals-view');
  const search = $('search');
  const state = $('state-filter');
  search.value = params.get('search') ?? '';
  state.value = params.get('state') ?? '';
  const rows = new Map(); // serial -> [row, data], to apply live terminal events in place
  const list = pager((items) => {
    rows.clear();
    const body = table(items, TERMINAL_COLUMNS);
    for (const [i, tr] of [...body.querySelectorAll('tbody tr')].entries()) rows.set(items[i].serial, [tr, items[i]]);
    $('terminal-list').replaceChildren(body);
  });
  const find = () => {
    const q = { search: search.value.trim(), state: state.value };
    history.replaceState(null, '', `#/terminals${query(q)}`);
    list.start(`/terminals${query({ ...q, limit: PAGE })}`);
  };
  let typing = null;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(find, 250);
  });
  state.addEventListener('change', find);
  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    find();
  });
  find();
  return {
    terminal(change) {
      const found = rows.get(change.serial);
      if (!found) return;
      const data = { ...found[1], ...change };
      const fresh = row(data, TERMINAL_COLUMNS);
      found[0].replaceWith(fresh);
      rows.set(change.serial, [fresh, data]);
    },
    leave: () => clearTimeout(typing),
  };
}

const SMS_COLUMNS = [
  ['id', 'id'], ['msisdn', 'MSISDN'], ['serial', 'serial'], ['command', 'command'], ['state', 'state'],
  ['size', 'bytes'], ['parts_sent', 'parts sent'], ['attempts', 'attempts'], ['error', 'error'],
  ['created_at', 'created'], ['updated_at', 'updated'],
];

function smsView() {
  mount('sms-view');
  const list = pager((items) => $('sms-list').replaceChildren(table(items, SMS_COLUMNS)));
  list.start(`/sms/outbox${query({ limit: PAGE })}`);
  return { stats: list.reload };
}

// --- one terminal -------------------------------------------------------------------------

const REQUEST_COLUMNS = [
  ['id', 'id'], ['command', 'command'], ['state', 'state'], ['result_label', 'result'],
  ['outcome', 'outcome'], ['origin', 'origin'], ['created_at', 'created'], ['updated_at', 'updated'],
];

const MESSAGE_COLUMNS = [
  ['time', 'time'], ['direction', 'dir'], ['bearer', 'bearer'], ['command', 'command'],
  ['sequence_id', 'seq'], ['event', 'event'], ['detail', 'detail'],
];
const ALARM_COLUMNS = [
  ['time', 'time'], ['code', 'code'], ['type', 'type'], ['status', 'status'], ['raised', 'raised'],
  ['cleared_code', 'cleared'],
];

function terminalView(_params, key) {
  mount('terminal-view');
  $('t-title').textContent = key;
  const base = `/terminals/${encodeURIComponent(key)}`;
  const tracked = new Map(); // id -> outcome box of the requests sent from this page
  let config = {};

  const summary = async () => {
    let t;
    try {
      t = await api(base);
    } catch (error) {
      if (error.status !== 401) notice(error.message);
      return;
    }
    config = t.config ?? {};
    $('t-refusals').replaceChildren(table(counts(t.refusals, 'reason'), [['reason', 'reason'], ['count', 'count']]));
    const creds = t.credentials ?? {};
    const s = t.session;
    facts('t-summary', [
      ['State', pill(t.state)], ['Serial', t.serial ?? '–'], ['IMEI', t.imei], ['IMSI', t.imsi ?? '–'],
      ['MSISDN', t.msisdn ?? '–'], ['Bearer', t.bearer ?? '–'], ['Address', t.address ?? '–'],
      ['Last seen', when(t.last_seen)], ['Software', t.software_version ?? '–'],
      ['Applications', (t.apps ?? []).join(', ') || '–'], ['Enabled', cell('enabled', t.enabled)],
      ['Compatibility', t.compat ? `${t.compat}${t.compat_default ? ' (deployment default)' : ''}` : '–'],
    ]);
    facts('t-session', [
      ['Session', s ? `${s.bearer ?? '?'} ${s.address ?? ''}` : 'none'],
      ['Encrypted', s ? cell('encrypted', s.encrypted) : '–'], ['Synced', s ? cell('synced', s.synced) : '–'],
      ['Protocol', t.protocol_version ?? '–'], ['Heartbeat', t.heartbeat_interval ? `${t.heartbeat_interval} s` : '–'],
      ['Cipher', t.cipher], ['Current credentials', credentials(creds.current)],
      ['Pending credentials', credentials(creds.pending)],
    ]);
    $('t-config').replaceChildren(table(Object.entries(config).map(([name, v]) => ({
      tag: v.tag, name, value: v.redacted ? '(secret)' : v.value,
    }))));
  };
  const requests = () => section('t-requests', `${base}/requests${query({ limit: 20 })}`, REQUEST_COLUMNS);
  const messages = () => section('t-messages', `${base}/messages${query({ limit: 20 })}`, MESSAGE_COLUMNS);
  const refresh = async (id) => {
    try {
      const request = await api(`/requests/${id}`);
      if (request.state === 'succeeded') await summary();
      outcome(tracked.get(id), request, config);
    } catch (error) {
      if (error.status !== 401) notice(error.message);
    }
  };

  summary();
  requests();
  messages();
  section('t-alarms', `${base}/alarms${query({ limit: 20 })}`, ALARM_COLUMNS);
  requestForm(base, (request) => {
    const box = el('div', { class: 'outcome' });
    tracked.set(request.id, box);
    $('r-outcomes').prepend(box);
    outcome(box, request, config);
    // Its events may have come before this answer: read its state once now.
    if (!FINAL.has(request.state)) refresh(request.id);
    requests();
  });
  return {
    terminal(change) {
      if (change.serial !== key) return;
      summary();
      messages();
    },
    stats: messages, // the log grows with every exchange of the terminal: follow it
    request(change) {
      if (change.serial !== key) return;
      requests();
      if (tracked.has(change.id)) refresh(change.id);
    },
  };
}

function credentials(set) {
  if (!set) return 'none';
  const parts = [`uplink until ${expiry(set.uplink_expiry)}`, `downlink until ${expiry(set.downlink_expiry)}`,
    `base key until ${expiry(set.base_key_expiry)}`];
  parts.push(set.delivered_at ? `delivered ${when(set.delivered_at).textContent}` : 'not delivered');
  return parts.join('; ');
}

const expiry = (value) => (value === null || value === undefined || value >= 0xFFFFFFFF ? 'never' : when(value).textContent);

function requestForm(base, sent) {
  const command = $('r-command');
  const fit = () => {
    for (const label of document.querySelectorAll('#request-form [data-for]')) label.hidden = label.dataset.for !== command.value;
  };
  command.addEventListener('change', fit);
  fit();
  $('r-code').replaceChildren(...REMOTE_CODES.map((name, code) =>
    el('option', { value: code }, `0x${code.toString(16).padStart(2, '0').toUpperCase()} ${name}`)));
  const form = $('request-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      sent(await api(`${base}/requests`, { method: 'POST', body: requestBody(command.value) }));
    } catch (error) {
      if (error.status !== 401) {
        const box = el('div', { class: 'outcome bad' }, `${command.value} refused: ${error.message}`);
        $('r-outcomes').prepend(box);
      }
    } finally {
      button.disabled = false;
    }
  });
}

/** Decimal tags go as 0xNNNN (the API reads numbers, 0xNNNN or tag names). */
const tagOf = (text) => (/^\d+$/.test(text) ? `0x${Number(text).toString(16).padStart(4, '0').toUpperCase()}` : text);

/** The JSON body of ``POST /terminals/<serial>/requests`` from the form. */
function requestBody(command) {
  const body = { command };
  if (command === 'CONFIG_GET') {
    body.tags = $('r-tags').value.split(',').map((s) => s.trim()).filter(Boolean).map(tagOf);
  } else if (command === 'CONFIG_SET') {
    body.values = {};
    for (const line of $('r-values').value.split('\n').map((s) => s.trim()).filter(Boolean)) {
      const at = line.indexOf('=');
      if (at < 1) throw new ApiError(400, `"${line}": write one "tag = value" a line`);
      body.values[tagOf(line.slice(0, at).trim())] = typed(line.slice(at + 1).trim());
    }
  } else {
    body.code = Number($('r-code').value);
  }
  const ttl = $('r-ttl').value;
  if (ttl) body.ttl = Number(ttl);
  return body;
}

/** A CONFIG_SET value: integers and JSON ("text", [1, 2], {"hex": "00FF"}) typed, else text. */
function typed(text) {
  if (/^-?\d+$/.test(text)) return Number(text);
  if (!/^["[{]/.test(text)) return text;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(400, `${text} is not valid JSON`);
  }
}

/** A request's state and outcome; a CONFIG_GET's answer as the values it reported. */
function outcome(box, request, config) {
  const done = FINAL.has(request.state);
  box.className = `outcome ${request.state === 'succeeded' ? 'good' : done ? 'bad' : 'wait'}`;
  const head = el('div', {}, el('strong', {}, `Request ${request.id} ${request.command}`), ' ', pill(request.state),
    request.result === null ? '' : ` result ${request.result_label}`, request.outcome ? ` · ${request.outcome}` : '');
  const lines = [head];
  if (request.command === 'CONFIG_GET' && request.answer) {
    const byTag = new Map(Object.entries(config).map(([name, v]) => [v.tag, [name, v]]));
    for (const tag of answerTags(request.answer)) {
      const [name, v] = byTag.get(tag) ?? [tag, {}];
      lines.push(el('div', { class: 'detail' }, `${name} (${tag}) = `, el('code', {}, JSON.stringify(v.value ?? null))));
    }
  }
  if (request.answer) lines.push(el('div', { class: 'detail muted' }, 'answer body ', el('code', {}, request.answer)));
  box.replaceChildren(...lines);
}

/** The tags of a CONFIG_GET_ACK body (hex): a result byte, then TLVs (tag, length, value). */
function answerTags(hex) {
  const tags = [];
  for (let i = 2; i + 8 <= hex.length; i += 8 + 2 * parseInt(hex.slice(i + 4, i + 8), 16)) tags.push(`0x${hex.slice(i, i + 4)}`);
  return tags;
}

// --- routing ------------------------------------------------------------------------------

const ROUTES = [
  [/^\/?$/, dashboardView, 'dashboard'],
  [/^\/terminals$/, terminalsView, 'terminals'],
  [/^\/terminals\/([^/]+)$/, terminalView, 'terminals'],
  [/^\/sms$/, smsView, 'sms'],
];

function route() {
  if (!live.authenticated) return;
  const hash = location.hash.replace(/^#/, '');
  const at = hash.indexOf('?');
  const [path, search] = at < 0 ? [hash, ''] : [hash.slice(0, at), hash.slice(at + 1)];
  view?.leave?.();
  view = null;
  notice('');
  for (const [pattern, make, nav] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.route === nav);
    try {
      view = make(new URLSearchParams(search), ...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      notice(`Cannot show this page: ${error.message}`);
    }
    return;
  }
  location.replace('#/');
}

async function logout() {
  try {
    await api('/session', { method: 'DELETE' });
  } finally {
    loggedOut();
  }
}

async function boot() {
  window.addEventListener('hashchange', route);
  $('logout').addEventListener('click', logout);
  try {
    loggedIn(await api('/stats'));
  } catch (error) {
    if (error.status !== 401) notice(`The gateway did not answer: ${error.message}`);
    loggedOut();
  }
}

boot();
