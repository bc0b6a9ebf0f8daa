// flowlens console page: reads the view state from the URL, fetches /api/*, draws SVG views.
'use strict';
(() => {
  const FILTER_KEYS = ['namespace', 'pod', 'workload', 'service', 'node', 'ip', 'port', 'protocol',
    'locality', 'drops', 'rtt_above_ms', 'end_reason'];
  const DIMS = ['src_namespace', 'dst_namespace', 'src_workload', 'dst_workload', 'src_pod', 'dst_pod',
    'src_service', 'dst_service', 'src_node', 'dst_node', 'src_group', 'dst_group', 'proto', 'dst_port',
    'locality', 'host', 'if_name'];
  const RANGES = { '1h': 3600, '6h': 21600, '24h': 86400, '7d': 604800 };
  const VIEWS = ['topology', 'explorer', 'health'];
  const GROUPS = ['workload', 'pod', 'namespace', 'node'];
  const COLOURS = ['rtt', 'retransmits', 'drops'];
  const METRICS = ['bytes', 'packets', 'flows'];
  const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1',
    '#ff9da7', '#9c755f', '#86bcb6', '#d37295', '#8cd17d'];
  const OTHER_COLOUR = '#c4c4c4';
  const SCALE = ['#2e9d5b', '#9cc23f', '#e6b80b', '#ef7d22', '#d7263d'];
  const NO_SAMPLE = '#a9b0b8';
  const TOKEN_KEY = 'flowlens.token';
  const HEALTH_EVERY_MS = 5000;
  const SVGNS = 'http://www.w3.org/2000/svg';

  const $ = (sel) => document.querySelector(sel);

  // ---------- DOM helpers

  function build(make, tag, attrs, children) {
    const node = make(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'style') node.style.cssText = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children || []) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
  const s = (tag, attrs, ...children) => build((t) => document.createElementNS(SVGNS, t), tag, attrs, children);

  const title = (text) => s('title', { text });

  // ---------- units

  function scaled(n, units, base) {
    const abs = Math.abs(n);
    if (abs < base) return { v: n, u: units[0] };
    let i = 0;
    let v = n;
    while (Math.abs(v) >= base && i < units.length - 1) { v /= base; i += 1; }
    return { v, u: units[i] };
  }
  function digits(v) {
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    const { v, u } = scaled(Number(n), ['B', 'kB', 'MB', 'GB', 'TB', 'PB'], 1000);
    return u === 'B' ? `${Math.round(v)} B` : `${digits(v)} ${u}`;
  }
  function fmtCount(n) {
    if (n === null || n === undefined) return '–';
    const { v, u } = scaled(Number(n), ['', 'k', 'M', 'G', 'T'], 1000);
    if (Math.abs(n) < 100000) return Number.isInteger(Number(n)) ? Number(n).toLocaleString('en-US') : digits(Number(n));
    if (u === '') return digits(v);
    return `${digits(v)}${u}`;
  }
  const fmtMetric = (metric, n) => (metric === 'bytes' ? fmtBytes(n) : fmtCount(n));
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1) return `${Math.round(ms * 1000)} µs`;
    if (ms >= 1000) return `${digits(ms / 1000)} s`;
    return `${digits(ms)} ms`;
  }
  function fmtRate(v) {
    if (v === null || v === undefined) return '–';
    return Math.abs(v) < 10 ? `${v.toFixed(2)}/s` : `${fmtCount(v)}/s`;
  }
  function fmtPct(x) {
    if (x === 0) return '0 %';
    if (x < 0.001) return '<0.1 %';
    return `${(x * 100).toFixed(x < 0.1 ? 1 : 0)} %`;
  }
  function fmtDuration(sec) {
    if (sec % 86400 === 0) return `${sec / 86400} d`;
    if (sec % 3600 === 0) return `${sec / 3600} h`;
    if (sec % 60 === 0) return `${sec / 60} min`;
    return `${sec} s`;
  }
  const pad2 = (n) => String(n).padStart(2, '0');
  function fmtTime(unix, withDate) {
    const d = new Date(unix * 1000);
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return withDate ? `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hm}` : hm;
  }

  // ---------- state <-> URL

  const state = {
    view: 'topology', range: '1h', from: null, to: null, group: 'workload', colour: 'rtt',
    dims: ['src_namespace', 'dst_namespace'], metric: 'bytes', limit: null, filters: [], sel: null,
  };
  let startupError = null;

  function parseFilters(text) {
    const out = [];
    for (const word of text.trim().split(/\s+/).filter(Boolean)) {
      const eq = word.indexOf('=');
      if (eq <= 0) throw new Error(`filter \`${word}\` is not key=value`);
      const key = word.slice(0, eq);
      const value = word.slice(eq + 1);
      if (!FILTER_KEYS.includes(key)) {
        throw new Error(`unknown filter key \`${key}\` (keys: ${FILTER_KEYS.join(', ')})`);
      }
      if (value === '') throw new Error(`filter \`${key}\` has no value`);
      out.push([key, value]);
    }
    return out;
  }
  const filterText = () => state.filters.map(([k, v]) => `${k}=${v}`).join(' ');

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const pick = (key, allowed, dflt) => (allowed.includes(q.get(key)) ? q.get(key) : dflt);
    state.view = pick('view', VIEWS, 'topology');
    state.range = pick('range', Object.keys(RANGES), '1h');
    const from = Number(q.get('from'));
    const to = Number(q.get('to'));
    if (q.has('from') && q.has('to') && Number.isFinite(from) && Number.isFinite(to) && to > from) {
      state.from = Math.floor(from);
      state.to = Math.floor(to);
    }
    state.group = pick('group', GROUPS, 'workload');
    state.colour = pick('colour', COLOURS, 'rtt');
    state.metric = pick('metric', METRICS, 'bytes');
    if (q.has('dims')) {
      const dims = q.get('dims').split(',').map((d) => d.trim()).filter(Boolean);
      const bad = dims.filter((d) => !DIMS.includes(d));
      if (bad.length) startupError = `unknown dimension \`${bad[0]}\``;
      const good = [...new Set(dims.filter((d) => DIMS.includes(d)))].slice(0, 3);
      if (good.length) state.dims = good;
    }
    if (/^\d+$/.test(q.get('limit') || '')) state.limit = q.get('limit');
    const filters = [];
    for (const [k, v] of q) if (FILTER_KEYS.includes(k) && v !== '') filters.push([k, v]);
    if (q.get('filter')) {
      try { filters.push(...parseFilters(q.get('filter'))); } catch (e) { startupError = e.message; }
    }
    state.filters = filters;
    const sel = q.get('sel');
    state.sel = sel && /^(node:.+|edge:.+\|.+)$/.test(sel) ? sel : null;
    return q.get('token');
  }

  const enc = (v) => encodeURIComponent(v).replace(/%2F/g, '/').replace(/%3A/g, ':').replace(/%2C/g, ',')
    .replace(/%7C/g, '|');

  function writeUrl() {
    const parts = [];
    const add = (k, v) => parts.push(`${enc(k)}=${enc(v)}`);
    add('view', state.view);
    if (state.from !== null) { add('from', state.from); add('to', state.to); } else add('range', state.range);
    add('group', state.group);
    add('colour', state.colour);
    add('dims', state.dims.join(','));
    add('metric', state.metric);
    if (state.limit) add('limit', state.limit);
    for (const [k, v] of state.filters) add(k, v);
    if (state.sel) add('sel', state.sel);
    history.replaceState(null, '', `${location.pathname}?${parts.join('&')}${location.hash}`);
  }

  function timeParams() {
    if (state.from !== null) return [['from', state.from], ['to', state.to]];
    const to = Math.ceil(Date.now() / 60000) * 60;
    return [['from', to - RANGES[state.range]], ['to', to]];
  }

  // ---------- API

  let token = null;

  async function api(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of params || []) qs.append(k, String(v));
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const query = qs.toString();
    let res;
    try {
      res = await fetch(`${path}${query ? `?${query}` : ''}`, { headers, cache: 'no-store' });
    } catch (e) {
      throw new Error(`cannot reach the console: ${e.message}`);
    }
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { body = null; }
    if (body && typeof body === 'object' && body.error) throw new Error(String(body.error));
    if (!res.ok) throw new Error(`${path} answered HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`);
    if (!body || typeof body !== 'object') throw new Error(`${path} answered something that is not JSON`);
    return body;
  }

  // ---------- status and the render cycle

  function setStatus(text) {
    const el = $('#status');
    el.textContent = text;
    el.className = `status ${text.startsWith('error') ? 'error' : text}`;
  }

  let generation = 0;
  const lastData = {};

  // Runs one load of the current view; a newer run makes an older one drop its results.
  async function run(task) {
    const mine = ++generation;
    const live = () => mine === generation;
    setStatus('loading');
    try {
      await task(live);
      if (live()) setStatus('ready');
    } catch (e) {
      if (live()) setStatus(`error: ${e.message}`);
    }
  }

  function render() {
    for (const v of VIEWS) {
      $(`#view-${v}`).hidden = v !== state.view;
      const tab = document.querySelector(`a.tab[data-view="${v}"]`);
      tab.classList.toggle('active', v === state.view);
      tab.setAttribute('aria-selected', String(v === state.view));
    }
    syncControls();
    stopHealthTimer();
    if (startupError) {
      setStatus(`error: ${startupError}`);
      startupError = null;
      return;
    }
    if (state.view === 'topology') run(loadTopology);
    else if (state.view === 'explorer') run(loadExplorer);
    else run(loadHealth);
  }

  function syncControls() {
    const range = $('#range');
    range.querySelector('option[value="custom"]')?.remove();
    if (state.from !== null) {
      const label = `${fmtTime(state.from, true)} – ${fmtTime(state.to, true)}`;
      range.append(h('option', { value: 'custom', text: label }));
      range.value = 'custom';
    } else range.value = state.range;
    $('#group').value = state.group;
    $('#colour').value = state.colour;
    $('#metric').value = state.metric;
    for (let i = 0; i < 3; i += 1) $(`#dim${i + 1}`).value = state.dims[i] || '';
    $('#dim3').disabled = !state.dims[1];
    if (document.activeElement !== $('#filter')) $('#filter').value = filterText();
  }

  // ---------- topology

  const edgeKey = (e) => `${e.source}|${e.target}`;

  function colourOf(e, by) {
    const packets = Number(e.packets) || 0;
    if (by === 'rtt') {
      if (e.rtt_ms === null || e.rtt_ms === undefined) return NO_SAMPLE;
      const t = [1, 5, 20, 100].findIndex((x) => e.rtt_ms < x);
      return SCALE[t < 0 ? 4 : t];
    }
    const n = Number(by === 'drops' ? e.drops : e.retransmits) || 0;
    if (n === 0) return SCALE[0];
    const ratio = n / Math.max(1, packets + (by === 'drops' ? n : 0));
    const t = [0.001, 0.01, 0.05].findIndex((x) => ratio < x);
    return SCALE[t < 0 ? 4 : t + 1];
  }

  function legendItems(by) {
    if (by === 'rtt') {
      return [[SCALE[0], '< 1 ms'], [SCALE[1], '1–5 ms'], [SCALE[2], '5–20 ms'], [SCALE[3], '20–100 ms'],
        [SCALE[4], '≥ 100 ms'], [NO_SAMPLE, 'no sample']];
    }
    const what = by === 'drops' ? 'dropped' : 'retransmitted';
    return [[SCALE[0], 'none'], [SCALE[1], '< 0.1 %'], [SCALE[2], '0.1–1 %'], [SCALE[3], '1–5 %'],
      [SCALE[4], `≥ 5 % ${what}`]];
  }

  function drawLegend(by) {
    const box = $('#legend');
    box.replaceChildren(h('span', { class: 'legend-title', text: `edge colour: ${by}` }));
    for (const [colour, label] of legendItems(by)) {
      box.append(h('span', { class: 'key' }, h('i', { style: `background:${colour}` }), label));
    }
    box.append(h('span', { class: 'key' }, h('i', { class: 'line' }), 'width ~ log(bytes)'));
    for (const kind of ['workload', 'Group', 'External']) {
      box.append(h('span', { class: 'key' }, h('i', { class: `dot ${nodeClass(kind)}` }),
        kind === 'workload' ? 'pod / workload' : kind));
    }
  }

  const nodeClass = (kind) => (kind === 'Group' ? 'k-group' : kind === 'External' ? 'k-external' : 'k-pod');
  const nodeRadius = (bytes) => 5 + 1.1 * Math.log10(1 + Number(bytes || 0));

  // Deterministic layout: areas (one per namespace, then one for ends without a namespace) on an
  // ellipse, each area's nodes on a small circle inside it, sorted by id; the ellipse is then
  // stretched (never shrunk) to use the space of the drawing.
  function layout(nodes, width, height) {
    const areas = new Map();
    for (const n of nodes) {
      const ns = n.namespace || '';
      if (!areas.has(ns)) areas.set(ns, []);
      areas.get(ns).push(n);
    }
    const names = [...areas.keys()].filter((x) => x !== '').sort();
    if (areas.has('')) names.push('');
    const list = names.map((name) => {
      const members = areas.get(name).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const count = members.length;
      const ring = count <= 1 ? 0 : Math.max(64, (count * 120) / (2 * Math.PI));
      return { name, members, ring, radius: ring + (count <= 1 ? 76 : 62) };
    });
    const gap = 90;
    const circumference = list.reduce((acc, a) => acc + 2 * a.radius + gap, 0);
    const big = list.length <= 1 ? 0 : Math.max(circumference / (2 * Math.PI), list[0].radius + 40);
    const maxR = Math.max(0, ...list.map((a) => a.radius));
    const sx = big ? Math.min(2.4, Math.max(1.5, (width / 2 - 140 - maxR) / big)) : 1;
    const sy = big ? Math.min(1.8, Math.max(1, (height / 2 - 40 - maxR) / big)) : 1;
    let walked = 0;
    const pos = new Map();
    for (const a of list) {
      const angle = Math.PI + (2 * Math.PI * (walked + a.radius + gap / 2)) / circumference;
      walked += 2 * a.radius + gap;
      a.x = big * sx * Math.cos(angle);
      a.y = big * sy * Math.sin(angle);
      // The ring starts across the direction of the centre, so no member hides behind another.
      const start = big ? Math.atan2(-a.y, -a.x) + Math.PI / 2 : -Math.PI / 2;
      a.members.forEach((n, i) => {
        const t = start + (2 * Math.PI * i) / a.members.length;
        const p = { x: a.x + a.ring * Math.cos(t), y: a.y + a.ring * Math.sin(t), dx: 0, dy: 1, area: a };
        if (a.ring > 0) { p.dx = Math.cos(t); p.dy = Math.sin(t); }
        p.r = nodeRadius(n.bytes);
        pos.set(n.id, p);
      });
    }
    return { areas: list, pos };
  }

  async function loadTopology(live) {
    const params = [...timeParams(), ['group', state.group], ...state.filters];
    const data = await api('api/topology', params);
    if (!live()) return;
    lastData.topology = data;
    drawTopology(data);
    if (state.sel) await loadDetails(live);
    else closeDetails(false);
  }

  function drawTopology(data) {
    const svg = $('#topology');
    const nodes = (data.nodes || []).map((n) => ({ ...n }));
    const edges = data.edges || [];
    const known = new Set(nodes.map((n) => n.id));
    for (const e of edges) {
      for (const id of [e.source, e.target]) {
        if (!known.has(id)) { known.add(id); nodes.push({ id, kind: 'External', namespace: '', bytes: 0 }); }
      }
    }
    drawLegend(state.colour);
    $('#details').hidden = !state.sel;
    $('#topology-info').textContent = `${nodes.length} nodes, ${edges.length} edges · table ${data.table || '?'}`;
    const box = svg.getBoundingClientRect();
    const { areas, pos } = layout(nodes, box.width || 1000, box.height || 700);
    const maxBytes = Math.max(1, ...edges.map((e) => Number(e.bytes) || 0));
    const width = (e) => 1 + 7 * (Math.log1p(Number(e.bytes) || 0) / Math.log1p(maxBytes));
    const pairs = new Set(edges.map(edgeKey));

    const under = s('g', { class: 'cluster-fills' });
    const edgeLayer = s('g', { class: 'edges' });
    const labelLayer = s('g', { class: 'edge-labels' });
    const clusterLayer = s('g', { class: 'clusters' });

    for (const a of areas) {
      under.append(s('circle', { class: a.name ? 'area-fill' : 'area-fill outside', cx: a.x, cy: a.y, r: a.radius }));
      const label = s('text', { class: 'cluster-label', x: a.x, y: a.y - a.radius - 7, 'text-anchor': 'middle',
        text: a.name || 'outside the cluster' });
      const ring = s('circle', { class: 'cluster-ring', cx: a.x, cy: a.y, r: a.radius });
      const g = a.name ? s('g', { class: 'cluster', 'data-namespace': a.name }, ring, label)
        : s('g', { class: 'outside', 'data-area': 'outside' }, ring, label);
      for (const n of a.members) g.append(drawNode(n, pos.get(n.id)));
      clusterLayer.append(g);
    }

    const showLabels = edges.length <= 60;
    for (const e of edges) {
      const a = pos.get(e.source);
      const b = pos.get(e.target);
      const w = width(e);
      const colour = colourOf(e, state.colour);
      const attrs = { 'data-source': e.source, 'data-target': e.target, 'data-bytes': e.bytes,
        'data-flows': e.flows, 'data-packets': e.packets, 'stroke-width': w.toFixed(2), stroke: colour };
      const g = s('g', { class: 'edge-group' });
      let mid;
      if (e.source === e.target) {
        const ang = Math.atan2(a.dy, a.dx) + Math.PI;
        const p = (t, d) => [a.x + d * Math.cos(ang + t), a.y + d * Math.sin(ang + t)];
        const [x0, y0] = p(-0.45, a.r);
        const [c0x, c0y] = p(-0.7, a.r + 38);
        const [c1x, c1y] = p(0.7, a.r + 38);
        const [x1, y1] = p(0.45, a.r + 6 + w);
        const d = `M${x0},${y0} C${c0x},${c0y} ${c1x},${c1y} ${x1},${y1}`;
        g.append(s('path', { class: 'edge-hit', d }), s('path', { class: 'edge loop', d, ...attrs }));
        g.append(arrow(x1, y1, Math.atan2(y1 - c1y, x1 - c1x), w, colour));
        mid = p(0, a.r + 46);
      } else {
        const dx = b.x - a.x;
        const dy = b.y - a.y;
        const len = Math.hypot(dx, dy) || 1;
        const ux = dx / len;
        const uy = dy / len;
        const off = pairs.has(`${e.target}|${e.source}`) ? 2 + w / 2 : 0;
        const ox = -uy * off;
        const oy = ux * off;
        const head = 5 + w * 1.2;
        const x0 = a.x + ux * a.r + ox;
        const y0 = a.y + uy * a.r + oy;
        const x1 = b.x - ux * (b.r + head) + ox;
        const y1 = b.y - uy * (b.r + head) + oy;
        const d = `M${x0.toFixed(1)},${y0.toFixed(1)} L${x1.toFixed(1)},${y1.toFixed(1)}`;
        g.append(s('path', { class: 'edge-hit', d }), s('path', { class: 'edge', d, ...attrs }));
        g.append(arrow(x1, y1, Math.atan2(uy, ux), w, colour));
        mid = [(x0 + x1) / 2 - uy * (off ? 7 + w : 0), (y0 + y1) / 2 + ux * (off ? 7 + w : 0)];
      }
      g.firstChild.append(title(edgeTitle(e)));
      g.children[1].append(title(edgeTitle(e)));
      const select = () => selectThing(`edge:${e.source}|${e.target}`);
      g.addEventListener('click', select);
      edgeLayer.append(g);
      if (showLabels) {
        labelLayer.append(s('text', { class: 'edge-label', x: mid[0].toFixed(1), y: mid[1].toFixed(1),
          'text-anchor': 'middle', dy: '0.35em', text: fmtBytes(e.bytes) }));
      }
    }

    const viewport = s('g', { class: 'viewport' }, under, edgeLayer, clusterLayer, labelLayer);
    if (!nodes.length) {
      viewport.append(s('text', { class: 'empty-note', x: 0, y: 0, 'text-anchor': 'middle', text: 'no flows in this range' }));
    }
    svg.replaceChildren(viewport);
    svg.classList.toggle('dense', edges.length > 60);
    fitViewBox(svg, areas);
    // A clear box under each node's circle and label: a click anywhere on the pair selects the node.
    for (const g of svg.querySelectorAll('g.node')) {
      const bb = g.getBBox();
      g.prepend(s('rect', { class: 'node-hit', x: (bb.x - 2).toFixed(1), y: (bb.y - 2).toFixed(1),
        width: (bb.width + 4).toFixed(1), height: (bb.height + 4).toFixed(1) }));
    }
    markSelection();
  }

  // An arrowhead whose base centre is (x, y), pointing along angle.
  function arrow(x, y, angle, w, colour) {
    const len = 5 + w * 1.2;
    const half = 2.5 + w * 0.8;
    const nx = -Math.sin(angle) * half;
    const ny = Math.cos(angle) * half;
    const pts = [[x + Math.cos(angle) * len, y + Math.sin(angle) * len], [x + nx, y + ny], [x - nx, y - ny]];
    return s('polygon', { class: 'arrow', points: pts.map((p) => p.map((v) => v.toFixed(1)).join(',')).join(' '), fill: colour });
  }

  function edgeTitle(e) {
    const sampled = e.max_sampling_rate > 1 ? `\nsampled up to 1:${e.max_sampling_rate} (estimates)` : '';
    return `${e.source} → ${e.target}\n${fmtBytes(e.bytes)} (${e.bytes} B), ${fmtCount(e.packets)} packets, `
      + `${fmtCount(e.flows)} flows\nrtt ${fmtMs(e.rtt_ms)}, retransmits ${fmtCount(e.retransmits)}, `
      + `drops ${fmtCount(e.drops)}${sampled}`;
  }

  function drawNode(n, p) {
    const anchor = p.dx > 0.3 ? 'start' : p.dx < -0.3 ? 'end' : 'middle';
    const lx = p.dx * (p.r + 5);
    const ly = p.dy * (p.r + 5) + (Math.abs(p.dx) > 0.3 ? 4 : p.dy > 0 ? 10 : -3);
    const g = s('g', { class: `node ${nodeClass(n.kind)}`, 'data-id': n.id, 'data-kind': n.kind,
      'data-bytes': n.bytes, 'data-namespace': n.namespace || '', transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})`,
      tabindex: 0, role: 'button' },
    s('circle', { r: p.r.toFixed(1) }),
    s('text', { x: lx.toFixed(1), y: ly.toFixed(1), 'text-anchor': anchor, text: n.id }),
    title(`${n.id}\n${n.kind}${n.namespace ? ` in ${n.namespace}` : ''}\n${fmtBytes(n.bytes)} (${n.bytes} B)`));
    const select = () => selectThing(`node:${n.id}`);
    g.addEventListener('click', select);
    g.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); select(); } });
    return g;
  }

  // The view box holds every area; a small graph is not blown up past 1 unit per pixel.
  function fitViewBox(svg, areas) {
    const box = svg.getBoundingClientRect();
    const cw = box.width || 1000;
    const ch = box.height || 700;
    const bounds = (k) => (areas.length ? [
      Math.min(...areas.map((a) => a.x - a.radius)) - 130 * k, Math.min(...areas.map((a) => a.y - a.radius)) - 50 * k,
      Math.max(...areas.map((a) => a.x + a.radius)) + 130 * k, Math.max(...areas.map((a) => a.y + a.radius)) + 40 * k,
    ] : [-100, -100, 100, 100]);
    const scaleOf = ([x0, y0, x1, y1]) => Math.max((x1 - x0) / cw, (y1 - y0) / ch, 1);
    const k = Math.min(scaleOf(bounds(1)), 1.6);
    const b = bounds(k);
    const scale = scaleOf(b);
    const w = cw * scale;
    const hgt = ch * scale;
    const cx = (b[0] + b[2]) / 2;
    const cy = (b[1] + b[3]) / 2;
    svg.setAttribute('viewBox', `${(cx - w / 2).toFixed(0)} ${(cy - hgt / 2).toFixed(0)} ${w.toFixed(0)} ${hgt.toFixed(0)}`);
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
    // Text grows with the zoom-out (up to 1.6x) so labels stay readable on large graphs.
    svg.style.setProperty('--k', k.toFixed(2));
  }

  function selectThing(sel) {
    const opening = !state.sel;
    state.sel = sel;
    writeUrl();
    if (opening && lastData.topology) drawTopology(lastData.topology);
    markSelection();
    run(loadDetails);
  }

  function parseSel(sel) {
    if (!sel) return null;
    if (sel.startsWith('node:')) return { kind: 'node', id: sel.slice(5) };
    const rest = sel.slice(5);
    const bar = rest.indexOf('|');
    return { kind: 'edge', source: rest.slice(0, bar), target: rest.slice(bar + 1) };
  }

  function markSelection() {
    const sel = parseSel(state.sel);
    const svg = $('#topology');
    for (const el of svg.querySelectorAll('.selected, .touch')) el.classList.remove('selected', 'touch');
    svg.classList.toggle('has-sel', Boolean(sel));
    if (!sel) return;
    const css = (v) => CSS.escape(v);
    if (sel.kind === 'node') {
      svg.querySelector(`g.node[data-id="${css(sel.id)}"]`)?.classList.add('selected');
      for (const attr of ['data-source', 'data-target']) {
        for (const p of svg.querySelectorAll(`path.edge[${attr}="${css(sel.id)}"]`)) p.parentNode.classList.add('touch');
      }
    } else {
      const path = svg.querySelector(`path.edge[data-source="${css(sel.source)}"][data-target="${css(sel.target)}"]`);
      path?.parentNode.classList.add('selected');
    }
  }

  async function loadDetails(live) {
    const sel = parseSel(state.sel);
    if (!sel) return;
    const which = sel.kind === 'node' ? [['node', sel.id]] : [['source', sel.source], ['target', sel.target]];
    const panel = $('#details');
    panel.hidden = false;
    panel.classList.add('busy');
    $('#details-title').textContent = sel.kind === 'node' ? sel.id : `${sel.source} → ${sel.target}`;
    const data = await api('api/flows', [...timeParams(), ['group', state.group], ...which, ...state.filters]);
    if (!live()) return;
    panel.classList.remove('busy');
    fillDetails(data);
  }

  function setField(name, value, text) {
    const el = document.querySelector(`#details [data-field="${name}"]`);
    el.textContent = text;
    el.setAttribute('data-value', String(value ?? ''));
  }

  function fillTable(table, headers, rows, empty) {
    const head = h('thead', {}, h('tr', {}, ...headers.map(([label, cls]) => h('th', { class: cls, text: label }))));
    const body = h('tbody', {}, ...rows);
    table.replaceChildren(head, body);
    if (!rows.length) table.prepend(h('caption', { class: 'none', text: empty }));
  }
  const num = (value, text, cls) => h('td', { class: `num ${cls || ''}`.trim(), 'data-value': value ?? '', text });

  function fillDetails(d) {
    const t = d.totals || {};
    setField('bytes', t.bytes, fmtBytes(t.bytes));
    setField('packets', t.packets, fmtCount(t.packets));
    setField('flows', t.flows, fmtCount(t.flows));
    const rtt = d.rtt_ms || {};
    const rttEl = $('#details-rtt');
    rttEl.textContent = rtt.mean === null || rtt.mean === undefined ? 'no samples'
      : `mean ${fmtMs(rtt.mean)} · p50 ${fmtMs(rtt.p50)} · p99 ${fmtMs(rtt.p99)}`;
    for (const k of ['mean', 'p50', 'p99']) rttEl.setAttribute(`data-${k}`, rtt[k] ?? '');
    fillTable($('#details-ports'), [['proto'], ['port', 'num'], ['bytes', 'num'], ['flows', 'num']],
      (d.ports || []).map((p) => h('tr', {}, h('td', { text: p.proto }), num(p.port, String(p.port)),
        num(p.bytes, fmtBytes(p.bytes)), num(p.flows, fmtCount(p.flows)))), 'no flows');
    fillTable($('#details-drops'), [['reason'], ['drops', 'num']],
      (d.drop_reasons || []).map((r) => h('tr', {}, h('td', { text: r.reason }), num(r.drops, fmtCount(r.drops)))),
      'no drops');
    fillTable($('#details-flows'), [['ended'], ['src → dst'], ['proto'], ['bytes', 'num'], ['rtt', 'num'], ['end'],
      ['retx/ drops', 'num']],
    (d.flows || []).map((f) => h('tr', {},
      h('td', { text: shortTime(f.time_end), title: f.time_end }),
      h('td', { class: 'ends' }, h('div', { text: f.src }), h('div', { text: `→ ${f.dst}` })),
      h('td', { text: f.proto }), h('td', { class: 'num', 'data-value': f.bytes ?? '', 'data-packets': f.packets ?? '',
        title: `${fmtCount(f.packets)} packets`, text: fmtBytes(f.bytes) }),
      num(f.rtt_ms, fmtMs(f.rtt_ms)), h('td', { text: f.end_reason }),
      h('td', { class: 'num', 'data-retransmits': f.retransmits ?? '', 'data-drops': f.drops ?? '',
        text: `${fmtCount(f.retransmits)} / ${fmtCount(f.drops)}` }))), 'no flows');
  }

  function shortTime(rfc) {
    const t = Date.parse(rfc);
    return Number.isFinite(t) ? fmtTime(t / 1000, state.from !== null || state.range !== '1h') : String(rfc);
  }

  function closeDetails(updateUrl) {
    $('#details').hidden = true;
    if (updateUrl) {
      state.sel = null;
      writeUrl();
      if (lastData.topology) drawTopology(lastData.topology);
    }
  }

  // ---------- explorer

  const keyOf = (series) => (series.key || []).join('|');
  const isOther = (series) => (series.key || [])[0] === 'Other';

  async function loadExplorer(live) {
    const params = [...timeParams(), ['dims', state.dims.join(',')], ['metric', state.metric], ...state.filters];
    if (state.limit) params.push(['limit', state.limit]);
    const data = await api('api/explore', params);
    if (!live()) return;
    lastData.explorer = data;
    drawExplorer(data);
  }

  function drawExplorer(data) {
    const series = data.series || [];
    const colours = new Map();
    series.forEach((x, i) => colours.set(keyOf(x), isOther(x) ? OTHER_COLOUR : PALETTE[i % PALETTE.length]));
    const metric = data.metric || state.metric;
    const total = $('#explore-total');
    total.setAttribute('data-value', String(data.total ?? 0));
    total.textContent = fmtMetric(metric, data.total ?? 0);
    $('#explore-info').textContent = `step ${fmtDuration(data.step || 60)} · table ${data.table || '?'}`;
    const legend = $('#explore-legend');
    legend.replaceChildren(...series.map((x) => h('span', { class: 'key' },
      h('i', { style: `background:${colours.get(keyOf(x))}` }), (x.key || []).join(' → '))));
    drawChart(data, series, colours, metric);
    drawSankey(series, colours, metric);
    drawExploreTable(data, series, colours, metric);
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  }

  function drawChart(data, series, colours, metric) {
    const svg = $('#explore-chart');
    const W = Math.max(400, Math.round(svg.getBoundingClientRect().width || 1100));
    const H = 300;
    const m = { l: 72, r: 16, t: 26, b: 30 };
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('height', H);
    const step = data.step || 60;
    const times = [...new Set(series.flatMap((x) => (x.points || []).map((p) => p[0])))].sort((a, b) => a - b);
    const [tFrom, tTo] = times.length > 1 ? [times[0], times[times.length - 1]]
      : times.length ? [times[0], times[0] + step] : timeParams().map((p) => p[1]);
    const index = new Map(times.map((t, i) => [t, i]));
    let base = times.map(() => 0);
    const layers = series.map((x) => {
      const vals = times.map(() => 0);
      for (const [t, v] of x.points || []) vals[index.get(t)] += Number(v) || 0;
      const top = base.map((b, i) => b + vals[i]);
      const layer = { x, bottom: base, top };
      base = top;
      return layer;
    });
    const yMax = Math.max(1, ...base);
    const yStep = niceStep(yMax, 5);
    const yTop = Math.ceil(yMax / yStep) * yStep;
    const X = (t) => m.l + ((t - tFrom) / Math.max(1, tTo - tFrom)) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (v / yTop) * (H - m.t - m.b);
    const grid = s('g', { class: 'axis' });
    for (let v = 0; v <= yTop + yStep / 2; v += yStep) {
      grid.append(s('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }),
        s('text', { x: m.l - 6, y: Y(v), dy: '0.32em', 'text-anchor': 'end', text: fmtMetric(metric, v) }));
    }
    grid.append(s('text', { class: 'axis-title', x: 4, y: 12, text: `${metric} per ${fmtDuration(step)}` }));
    const span = tTo - tFrom;
    const withDate = span > 86400;
    const tick = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800]
      .find((c) => span / c <= 8) || 604800;
    const tz = new Date(tFrom * 1000).getTimezoneOffset() * 60;
    for (let t = Math.ceil((tFrom - tz) / tick) * tick + tz; t <= tTo; t += tick) {
      grid.append(s('line', { class: 'tick', x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4 }),
        s('text', { x: X(t), y: H - m.b + 16, 'text-anchor': 'middle', text: fmtTime(t, withDate) }));
    }
    grid.append(s('line', { class: 'baseline', x1: m.l, x2: W - m.r, y1: Y(0), y2: Y(0) }));
    const areas = s('g', { class: 'areas' });
    for (const layer of layers) {
      const up = times.map((t, i) => `${X(t).toFixed(1)},${Y(layer.top[i]).toFixed(1)}`);
      const down = times.map((t, i) => `${X(t).toFixed(1)},${Y(layer.bottom[i]).toFixed(1)}`).reverse();
      const d = times.length ? `M${up.join('L')}L${down.join('L')}Z` : 'M0,0Z';
      const key = keyOf(layer.x);
      areas.append(s('path', { class: 'area', 'data-key': key, d, fill: colours.get(key) },
        title(`${(layer.x.key || []).join(' → ')}\ntotal ${fmtMetric(metric, layer.x.total)}`)));
    }
    svg.replaceChildren(grid, areas);
    if (!series.length) {
      svg.append(s('text', { class: 'empty-note', x: W / 2, y: H / 2, 'text-anchor': 'middle', text: 'no flows in this range' }));
    }
    const cursor = s('g', { class: 'cursor', visibility: 'hidden' }, s('line', { y1: m.t, y2: H - m.b }), s('text', { y: m.t + 10 }));
    svg.append(cursor);
    svg.onmousemove = (ev) => {
      if (!times.length) return;
      const r = svg.getBoundingClientRect();
      const x = ((ev.clientX - r.left) / r.width) * W;
      const t = tFrom + ((x - m.l) / (W - m.l - m.r)) * (tTo - tFrom);
      const i = Math.max(0, Math.min(times.length - 1, Math.round((t - tFrom) / step)));
      const sum = layers.length ? layers[layers.length - 1].top[i] : 0;
      cursor.setAttribute('visibility', 'visible');
      cursor.firstChild.setAttribute('x1', X(times[i]));
      cursor.firstChild.setAttribute('x2', X(times[i]));
      const label = cursor.lastChild;
      label.textContent = `${fmtTime(times[i], withDate)} · ${fmtMetric(metric, sum)}`;
      const left = X(times[i]) > W * 0.7;
      label.setAttribute('x', X(times[i]) + (left ? -6 : 6));
      label.setAttribute('text-anchor', left ? 'end' : 'start');
    };
    svg.onmouseleave = () => cursor.setAttribute('visibility', 'hidden');
  }

  function drawSankey(series, colours, metric) {
    const svg = $('#sankey');
    const W = Math.max(300, Math.round(svg.getBoundingClientRect().width || 600));
    const H = 320;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('height', H);
    const cols = state.dims.length;
    if (cols < 2 || !series.length) {
      svg.replaceChildren(s('text', { class: 'empty-note', x: W / 2, y: H / 2, 'text-anchor': 'middle',
        text: cols < 2 ? 'choose two or more dimensions for the flow diagram' : 'no flows in this range' }));
      return;
    }
    const label = (x, i) => String((x.key || [])[i] ?? 'Other');
    const columns = [];
    for (let i = 0; i < cols; i += 1) {
      const sums = new Map();
      for (const x of series) sums.set(label(x, i), (sums.get(label(x, i)) || 0) + Number(x.total || 0));
      const list = [...sums].map(([name, value]) => ({ name, value, col: i }))
        .sort((a, b) => (a.name === 'Other') - (b.name === 'Other') || b.value - a.value || (a.name < b.name ? -1 : 1));
      columns.push(list);
    }
    const nodeW = 12;
    const gap = 8;
    const m = { t: 22, b: 8, l: 8, r: 8 };
    const usable = H - m.t - m.b;
    const k = Math.min(...columns.map((c) => (usable - gap * (c.length - 1)) / Math.max(1, c.reduce((a, n) => a + n.value, 0))));
    const colX = (i) => m.l + (i * (W - m.l - m.r - nodeW)) / (cols - 1);
    const byName = columns.map((c) => new Map(c.map((n) => [n.name, n])));
    const nodeColour = new Map();
    let next = 0;
    for (const c of columns) {
      let y = m.t;
      for (const n of c) {
        n.x = colX(n.col);
        n.y = y;
        n.h = Math.max(1, n.value * k);
        n.outY = y;
        n.inY = y;
        y += n.h + gap;
        if (!nodeColour.has(n.name)) nodeColour.set(n.name, n.name === 'Other' ? OTHER_COLOUR : PALETTE[next++ % PALETTE.length]);
      }
    }
    const linkLayer = s('g', { class: 'links' });
    for (let i = 0; i < cols - 1; i += 1) {
      const sums = new Map();
      for (const x of series) {
        const key = `${label(x, i)}\u0000${label(x, i + 1)}`;
        sums.set(key, (sums.get(key) || 0) + Number(x.total || 0));
      }
      const links = [...sums].map(([key, value]) => {
        const [a, b] = key.split('\u0000');
        return { a: byName[i].get(a), b: byName[i + 1].get(b), value };
      }).sort((p, q) => p.a.y - q.a.y || p.b.y - q.b.y);
      for (const l of links) {
        const th = Math.max(0.5, l.value * k);
        const x0 = l.a.x + nodeW;
        const x1 = l.b.x;
        const y0 = l.a.outY;
        l.a.outY += th;
        const mx = (x0 + x1) / 2;
        l.tmp = { x0, x1, y0, th, mx };
      }
      links.sort((p, q) => p.b.y - q.b.y || p.a.y - q.a.y);
      for (const l of links) {
        const { x0, x1, y0, th, mx } = l.tmp;
        const y1 = l.b.inY;
        l.b.inY += th;
        const d = `M${x0},${y0}C${mx},${y0} ${mx},${y1} ${x1},${y1}L${x1},${y1 + th}C${mx},${y1 + th} ${mx},${y0 + th} ${x0},${y0 + th}Z`;
        linkLayer.append(s('path', { class: 'sankey-link', d, fill: nodeColour.get(l.a.name), 'data-source': l.a.name,
          'data-target': l.b.name, 'data-value': l.value, 'data-column': i },
        title(`${l.a.name} → ${l.b.name}\n${fmtMetric(metric, l.value)}`)));
      }
    }
    const nodeLayer = s('g', { class: 'nodes' });
    columns.forEach((c, i) => {
      const anchor = i === cols - 1 ? 'end' : 'start';
      const tx = i === cols - 1 ? colX(i) - 4 : colX(i) + nodeW + 4;
      nodeLayer.append(s('text', { class: 'column-title', x: i === cols - 1 ? colX(i) + nodeW : colX(i), y: 12,
        'text-anchor': anchor, text: state.dims[i] }));
      for (const n of c) {
        nodeLayer.append(s('rect', { class: 'sankey-node', x: n.x, y: n.y.toFixed(1), width: nodeW, height: n.h.toFixed(1),
          fill: nodeColour.get(n.name), 'data-label': n.name, 'data-value': n.value, 'data-column': i },
        title(`${state.dims[i]} = ${n.name}\n${fmtMetric(metric, n.value)}`)));
        if (n.h >= 9) {
          nodeLayer.append(s('text', { class: 'sankey-label', x: tx, y: (n.y + n.h / 2).toFixed(1), dy: '0.35em',
            'text-anchor': anchor, text: `${n.name || '(none)'} · ${fmtMetric(metric, n.value)}` }));
        }
      }
    });
    svg.replaceChildren(linkLayer, nodeLayer);
  }

  function drawExploreTable(data, series, colours, metric) {
    const all = Number(data.total) || 0;
    const head = h('tr', {}, h('th', { class: 'swatch' }), ...state.dims.map((d) => h('th', { text: d })),
      h('th', { class: 'num', text: metric }), h('th', { class: 'num', text: 'share' }));
    const rows = series.map((x) => h('tr', { 'data-key': keyOf(x), class: isOther(x) ? 'other' : null },
      h('td', { class: 'swatch' }, h('i', { style: `background:${colours.get(keyOf(x))}` })),
      ...state.dims.map((_, i) => h('td', { text: (x.key || [])[i] ?? '' })),
      h('td', { class: 'num total', 'data-value': String(x.total ?? 0), text: fmtMetric(metric, x.total) }),
      h('td', { class: 'num share', text: all ? fmtPct(Number(x.total) / all) : '–' })));
    const foot = h('tr', {}, h('td'), h('td', { colspan: state.dims.length, text: 'all' }),
      h('td', { class: 'num', 'data-value': String(all), text: fmtMetric(metric, all) }), h('td'));
    $('#explore-table').replaceChildren(h('thead', {}, head), h('tbody', {}, ...rows), h('tfoot', {}, foot));
  }

  // ---------- health

  let healthTimer = null;
  const stopHealthTimer = () => { clearTimeout(healthTimer); healthTimer = null; };

  async function loadHealth(live) {
    const data = await api('api/health');
    if (!live()) return;
    lastData.health = data;
    drawHealth(data);
    scheduleHealth();
  }

  function scheduleHealth() {
    stopHealthTimer();
    if (state.view !== 'health') return;
    healthTimer = setTimeout(async () => {
      const mine = generation;
      try {
        const data = await api('api/health');
        if (mine !== generation || state.view !== 'health') return;
        lastData.health = data;
        drawHealth(data);
        setStatus('ready');
      } catch (e) {
        if (mine === generation) setStatus(`error: ${e.message}`);
      }
      if (mine === generation) scheduleHealth();
    }, HEALTH_EVERY_MS);
  }

  function sumWhere(map, re) {
    let found = false;
    let total = 0;
    for (const [k, v] of Object.entries(map || {})) {
      if (re.test(k) && Number.isFinite(v)) { found = true; total += v; }
    }
    return found ? total : null;
  }

  function drawHealth(data) {
    const stages = data.stages || [];
    const head = h('tr', {}, ...['stage', 'state', 'in', 'out', 'errors', 'lag', 'endpoint', 'all metrics']
      .map((x) => h('th', { text: x, class: ['in', 'out', 'errors', 'lag'].includes(x) ? 'num' : null })));
    const rows = stages.map((st) => {
      const rates = st.rates || {};
      const values = st.values || {};
      const inRate = sumWhere(rates, /records_(in|received)_total|packets_total$/);
      const outRate = sumWhere(rates, /(records_out|records_produced|rows_inserted|flows_exported)_total/);
      const errRate = sumWhere(rates, /error|dead_letter|invalid/);
      const lag = sumWhere(values, /lag/);
      const list = h('ul', { class: 'metrics' },
        ...Object.entries(rates).sort().map(([k, v]) => h('li', {}, h('code', { text: shortMetric(k) }), ` ${fmtRate(v)}`)),
        ...Object.entries(values).sort().map(([k, v]) => h('li', {}, h('code', { text: shortMetric(k) }), ` ${fmtCount(v)}`)));
      const more = Object.keys(rates).length + Object.keys(values).length;
      return h('tr', { 'data-stage': st.name, 'data-up': String(Boolean(st.up)), class: st.up ? 'up' : 'down' },
        h('th', { text: st.name }),
        h('td', { class: 'state' }, h('span', { class: `pill ${st.up ? 'up' : 'down'}`, text: st.up ? 'up' : 'down' }),
          st.error ? h('span', { class: 'err', text: ` ${st.error}` }) : null),
        num(inRate, fmtRate(inRate), 'rate-in'), num(outRate, fmtRate(outRate), 'rate-out'),
        num(errRate, fmtRate(errRate), errRate ? 'rate-errors bad' : 'rate-errors'), num(lag, fmtCount(lag), 'lag'),
        h('td', { class: 'url' }, h('code', { text: st.url || '' })),
        h('td', {}, more ? h('details', {}, h('summary', { text: `${more} series` }), list) : '–'));
    });
    $('#health').replaceChildren(h('thead', {}, head), h('tbody', {}, ...rows));
    const up = stages.filter((x) => x.up).length;
    $('#health-info').textContent = `${up} of ${stages.length} up · ${new Date().toLocaleTimeString()}`;
  }

  const shortMetric = (name) => name.replace(/^flowlens_/, '');

  // ---------- wiring

  function fillDimSelects() {
    for (let i = 1; i <= 3; i += 1) {
      const sel = $(`#dim${i}`);
      if (i > 1) sel.append(h('option', { value: '', text: '(none)' }));
      for (const d of DIMS) sel.append(h('option', { value: d, text: d }));
    }
  }

  function onDimsChange() {
    const picked = [1, 2, 3].map((i) => $(`#dim${i}`).value);
    if (!picked[1]) picked[2] = '';
    state.dims = [...new Set(picked.filter(Boolean))];
    if (!state.dims.length) state.dims = ['src_namespace'];
    changed();
  }

  function changed() {
    writeUrl();
    render();
  }

  function wire() {
    for (const tab of document.querySelectorAll('a.tab')) {
      tab.addEventListener('click', (ev) => {
        ev.preventDefault();
        state.view = tab.dataset.view;
        changed();
      });
    }
    $('#range').addEventListener('change', (ev) => {
      if (ev.target.value === 'custom') return;
      state.range = ev.target.value;
      state.from = null;
      state.to = null;
      changed();
    });
    $('#filter-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      let filters;
      try {
        filters = parseFilters($('#filter').value);
      } catch (e) {
        generation += 1;
        setStatus(`error: ${e.message}`);
        return;
      }
      state.filters = filters;
      $('#filter').blur();
      changed();
    });
    $('#group').addEventListener('change', (ev) => { state.group = ev.target.value; state.sel = null; changed(); });
    $('#colour').addEventListener('change', (ev) => {
      state.colour = ev.target.value;
      writeUrl();
      if (lastData.topology) drawTopology(lastData.topology);
      else render();
    });
    $('#metric').addEventListener('change', (ev) => { state.metric = ev.target.value; changed(); });
    for (let i = 1; i <= 3; i += 1) $(`#dim${i}`).addEventListener('change', onDimsChange);
    $('#details-close').addEventListener('click', () => closeDetails(true));
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && state.sel && state.view === 'topology') closeDetails(true);
    });
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (state.view === 'topology' && lastData.topology) drawTopology(lastData.topology);
        if (state.view === 'explorer' && lastData.explorer) drawExplorer(lastData.explorer);
      }, 150);
    });
  }

  function start() {
    const urlToken = readUrl();
    try {
      if (urlToken) sessionStorage.setItem(TOKEN_KEY, urlToken);
      token = sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      token = urlToken;
    }
    fillDimSelects();
    wire();
    writeUrl();
    render();
  }

  start();
})();
