#!/usr/bin/env node
// An SMSC for consentry's SMPP upstream tests. The SMPP side (PDU codec, framing, sessions)
// is the npm package smpp 0.5.1 (farhadi/node-smpp), not consentry's code; this file only
// decides the answers: bind checks, message ids, delivery receipts, MOs on request.
//
// Install (pinned by package-lock.json beside this file): npm ci --prefix tests/smpp
// (or, to keep the tree clean: copy package.json and package-lock.json elsewhere, npm ci
// there, and run with NODE_PATH=<there>/node_modules)
// Run:   node tests/smpp/smsc_sim.js --port 0 --http-port 0 --system-id upstream --password s3cret
// Ready: one line on stdout, "smsc-sim ready smpp=127.0.0.1:<port> http=127.0.0.1:<port>"
//        (port 0 = any free port; the line gives the real ones), and GET /health answers.
// Control (HTTP, JSON):
//   GET  /health    {"ok":true,"smpp_port":..,"http_port":..,"sessions":[{"system_id","bind"}]}
//   GET  /messages  every submit_sm received: ids, addresses, data_coding, esm_class,
//                   registered_delivery, text, short_message_hex, udh_hex, tlvs, pdu_hex
//   GET  /delivered every deliver_sm sent (receipts and MOs) with its deliver_sm_resp status
//   POST /mo        {"source_addr":"+14155550123","destination_addr":"12025550100","text":"STOP"}
//                   optional: data_coding (default 0 if the text is GSM 03.38, else 8; 0 is
//                   sent as GSM 03.38 one septet a byte, 8 as UCS-2 big-endian, any other
//                   value as the text's Latin-1 bytes),
//                   source_addr_ton/npi, dest_addr_ton/npi (default 1/1), system_id (default:
//                   every session bound as transceiver or receiver). Answers once every
//                   deliver_sm_resp is in (or after 5 s): {"sent":n,"statuses":[..]}; 409 if
//                   no session can receive.
//   POST /receipt   {"message_id":"..","stat":"DELIVRD"} a receipt by hand (any stat of
//                   Appendix B). Receipts go to the session that submitted, else to another
//                   bound session of the same system_id that can receive, else wait for one
//                   to bind (then they are sent right after its bind_*_resp).
// Options (or env SMSC_SIM_<NAME> with - as _, e.g. SMSC_SIM_SYSTEM_ID):
//   --host 127.0.0.1  --port 0  --http-port 0   (0: a free port, named in the ready line;
//                            not 2775 by default, which is consentry's own SMPP front)
//   --system-id/--password   required of every bind when set (else any bind is accepted);
//                            wrong ones get ESME_RINVSYSID (0x0F) / ESME_RINVPASWD (0x0E)
//   --smsc-system-id SMSCSIM system_id in bind_*_resp
//   --id-format hex|decimal|uuid   message_id in submit_sm_resp (hex: 16 lowercase digits)
//   --receipt-id same|decimal      id in the receipt text: the message_id itself, or (hex ids
//                                  only) its value in decimal, as some SMSCs do; the
//                                  receipted_message_id TLV always carries the message_id
//   --receipt-delay-ms 200   --auto-receipts 1 (0: receipts only through POST /receipt)
//   --undeliverable A,B      destinations whose receipts say stat:UNDELIV (message_state 5)
//   --reject A=0x58,B=0x0B   destinations whose submit_sm_resp carries that command_status
//   --enquire-link-ms 0      when > 0, send enquire_link to bound sessions that often
//   --log FILE               every event as one JSON line (appended)
'use strict';

const fs = require('fs');
const http = require('http');
const crypto = require('crypto');
const smpp = require('smpp');

// ---- options
const defaults = {
  host: '127.0.0.1', port: '0', 'http-port': '0', 'system-id': '', password: '',
  'smsc-system-id': 'SMSCSIM', 'id-format': 'hex', 'receipt-id': 'same',
  'receipt-delay-ms': '200', 'auto-receipts': '1', undeliverable: '', reject: '',
  'enquire-link-ms': '0', log: '',
};
const opt = {};
for (const k of Object.keys(defaults)) {
  const env = process.env['SMSC_SIM_' + k.toUpperCase().replace(/-/g, '_')];
  opt[k] = env !== undefined ? env : defaults[k];
}
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
  if (!m || !(m[1] in defaults)) { console.error(`unknown argument: ${argv[i]}`); process.exit(2); }
  opt[m[1]] = m[2] !== undefined ? m[2] : argv[++i];
}
const undeliverable = new Set(opt.undeliverable.split(',').filter(Boolean));
const rejects = new Map(opt.reject.split(',').filter(Boolean).map((s) => {
  const [dest, status] = s.split('=');
  return [dest, Number(status)];
}));
if (!['hex', 'decimal', 'uuid'].includes(opt['id-format'])) { console.error('bad --id-format'); process.exit(2); }
if (!['same', 'decimal'].includes(opt['receipt-id'])) { console.error('bad --receipt-id'); process.exit(2); }

// ---- keep the raw bytes of what arrives (node-smpp decodes them in place)
smpp.PDU.fromStream = function (stream, commandLength) {
  const body = stream.read(commandLength - 4);
  if (!body) return false;
  const head = Buffer.alloc(4);
  head.writeUInt32BE(commandLength, 0);
  const raw = Buffer.concat([head, body]);
  const pdu = new smpp.PDU(raw);
  pdu._raw = raw;
  return pdu;
};
const origFilter = smpp.PDU.prototype._filter;
smpp.PDU.prototype._filter = function (func) {
  if (func === 'decode' && Buffer.isBuffer(this.short_message)) this._short_message_raw = this.short_message;
  return origFilter.call(this, func);
};

// ---- state and logging
const messages = [];   // submit_sm received
const delivered = [];  // deliver_sm sent
const byId = new Map(); // message_id -> { record, session }
const logFile = opt.log ? fs.openSync(opt.log, 'a') : null;
function event(kind, data) {
  const line = JSON.stringify(Object.assign({ at: new Date().toISOString(), event: kind }, data));
  if (logFile !== null) fs.writeSync(logFile, line + '\n');
  process.stderr.write('smsc-sim ' + line + '\n');
}

let decimalCounter = 1000000000 + crypto.randomInt(0, 1000000000);
function newMessageId() {
  switch (opt['id-format']) {
    case 'decimal': return String(decimalCounter++);
    case 'uuid': return crypto.randomUUID();
    default: return crypto.randomBytes(8).toString('hex');
  }
}
function receiptTextId(id) {
  if (opt['receipt-id'] === 'decimal' && opt['id-format'] === 'hex') return BigInt('0x' + id).toString(10);
  return id;
}
function smppDate(d) { // YYMMDDhhmm, UTC
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) + p(d.getUTCHours()) + p(d.getUTCMinutes());
}
const STATES = { ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8 };
const GSM_BASIC = '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà';
const GSM_EXT = '^{}\\[~]|€\f';
function isGsm(text) { return [...text].every((c) => GSM_BASIC.includes(c) || GSM_EXT.includes(c)); }

function tlvsOf(pdu) {
  const known = new Set(Object.keys((smpp.commands[pdu.command] || {}).params || {}));
  const out = {};
  for (const k of Object.keys(pdu)) {
    if (k.startsWith('_') || known.has(k) || ['command', 'command_length', 'command_id', 'command_status', 'sequence_number'].includes(k)) continue;
    const v = pdu[k];
    out[k] = Buffer.isBuffer(v) ? v.toString('hex') : (v && v.message !== undefined ? v.message : v);
  }
  return out;
}

// ---- sending deliver_sm
function sendDeliver(session, fields, kind, extra) {
  return new Promise((resolve) => {
    const record = Object.assign({ kind, system_id: session.system_id }, extra, {
      source_addr: fields.source_addr, destination_addr: fields.destination_addr,
      esm_class: fields.esm_class, data_coding: fields.data_coding,
    });
    let done = false;
    const finish = (status) => {
      if (done) return;
      done = true;
      record.resp_status = status;
      event(kind + '_resp', { sequence_number: record.sequence_number, status });
      resolve(status);
    };
    const pdu = new smpp.PDU('deliver_sm', fields);
    const ok = session.send(pdu, (resp) => finish(resp.command_status));
    // send() has encoded the PDU: short_message is the bytes on the wire now
    record.sequence_number = pdu.sequence_number;
    record.short_message_hex = Buffer.isBuffer(pdu.short_message) ? pdu.short_message.toString('hex') : null;
    delivered.push(record);
    event(kind, record);
    if (!ok) finish('not-sent');
    setTimeout(() => finish('timeout'), 5000);
  });
}

const pendingReceipts = new Map(); // system_id -> [[entry, stat]] waiting for a session that can receive
const canReceive = (s) => !s.destroyed && (s.bound === 'transceiver' || s.bound === 'receiver');
function sendReceipt(entry, stat) {
  const { record } = entry;
  // Like an SMSC: to the session that submitted, else to another of the same system_id that
  // can receive, else kept until one binds.
  let session = canReceive(entry.session) ? entry.session : null;
  if (!session) session = [...sessions].find((s) => canReceive(s) && s.system_id === record.system_id) || null;
  if (!session) {
    if (!pendingReceipts.has(record.system_id)) pendingReceipts.set(record.system_id, []);
    pendingReceipts.get(record.system_id).push([entry, stat]);
    event('receipt_queued', { message_id: record.message_id, system_id: record.system_id, reason: 'no session of this system_id can receive' });
    return Promise.resolve('queued');
  }
  entry.session = session;
  const now = new Date();
  const ok = stat === 'DELIVRD' || stat === 'ACCEPTD' || stat === 'ENROUTE';
  const text = (record.text || '').replace(/[^\x20-\x7e]/g, '?').slice(0, 20);
  const body = `id:${receiptTextId(record.message_id)} sub:001 dlvrd:${ok ? '001' : '000'} ` +
    `submit date:${smppDate(new Date(record.received_at))} done date:${smppDate(now)} ` +
    `stat:${stat} err:${ok ? '000' : '001'} text:${text}`;
  return sendDeliver(session, {
    service_type: '',
    source_addr_ton: record.dest_addr_ton, source_addr_npi: record.dest_addr_npi,
    source_addr: record.destination_addr,
    dest_addr_ton: record.source_addr_ton, dest_addr_npi: record.source_addr_npi,
    destination_addr: record.source_addr,
    esm_class: 0x04, data_coding: 0x00, registered_delivery: 0,
    short_message: Buffer.from(body, 'ascii'),
    receipted_message_id: record.message_id,
    message_state: STATES[stat] || STATES.UNKNOWN,
  }, 'receipt', { message_id: record.message_id, stat, text: body });
}

// ---- the SMPP server
const sessions = new Set();
const server = smpp.createServer((session) => {
  sessions.add(session);
  session.bound = null;
  const peer = `${session.socket.remoteAddress}:${session.socket.remotePort}`;
  event('connect', { peer });
  session.on('close', () => { sessions.delete(session); session.destroyed = true; event('close', { peer, system_id: session.system_id }); });
  session.on('error', (e) => event('error', { peer, error: String(e && e.message || e) }));

  const bind = (kind) => (pdu) => {
    let status = 0;
    if (session.bound) status = 0x05; // ESME_RALYBND
    else if (opt['system-id'] && pdu.system_id !== opt['system-id']) status = 0x0F; // ESME_RINVSYSID
    else if (opt['system-id'] && pdu.password !== opt.password) status = 0x0E; // ESME_RINVPASWD
    event('bind', { peer, bind: kind, system_id: pdu.system_id, system_type: pdu.system_type, interface_version: pdu.interface_version, status });
    if (status === 0) { session.bound = kind; session.system_id = pdu.system_id; }
    session.send(pdu.response(status ? { command_status: status } : { system_id: opt['smsc-system-id'] }));
    const queued = pendingReceipts.get(pdu.system_id);
    if (status === 0 && kind !== 'transmitter' && queued) {
      pendingReceipts.delete(pdu.system_id);
      for (const [entry, stat] of queued) sendReceipt(entry, stat);
    }
  };
  session.on('bind_transceiver', bind('transceiver'));
  session.on('bind_transmitter', bind('transmitter'));
  session.on('bind_receiver', bind('receiver'));

  session.on('submit_sm', (pdu) => {
    if (!session.bound || session.bound === 'receiver') {
      event('submit_rejected', { peer, sequence_number: pdu.sequence_number, status: 0x04 });
      session.send(pdu.response({ command_status: 0x04 })); // ESME_RINVBNDSTS
      return;
    }
    const sm = pdu.short_message;
    const raw = pdu._short_message_raw || Buffer.alloc(0);
    const record = {
      system_id: session.system_id, sequence_number: pdu.sequence_number,
      service_type: pdu.service_type,
      source_addr_ton: pdu.source_addr_ton, source_addr_npi: pdu.source_addr_npi, source_addr: pdu.source_addr,
      dest_addr_ton: pdu.dest_addr_ton, dest_addr_npi: pdu.dest_addr_npi, destination_addr: pdu.destination_addr,
      esm_class: pdu.esm_class, protocol_id: pdu.protocol_id, priority_flag: pdu.priority_flag,
      registered_delivery: pdu.registered_delivery, data_coding: pdu.data_coding,
      text: sm && typeof sm.message === 'string' ? sm.message : null,
      short_message_hex: raw.toString('hex'),
      udh_hex: sm && sm.udh ? Buffer.concat(sm.udh.map((u) => Buffer.from(u))).toString('hex') : null,
      tlvs: tlvsOf(pdu),
      pdu_hex: pdu._raw ? pdu._raw.toString('hex') : null,
      received_at: new Date().toISOString(),
    };
    const reject = rejects.get(pdu.destination_addr);
    if (reject) {
      record.message_id = null;
      record.status = reject;
      messages.push(record);
      event('submit', record);
      session.send(pdu.response({ command_status: reject }));
      return;
    }
    record.message_id = newMessageId();
    record.status = 0;
    messages.push(record);
    byId.set(record.message_id, { record, session });
    event('submit', record);
    session.send(pdu.response({ message_id: record.message_id }));
    const wanted = (pdu.registered_delivery || 0) & 0x03; // 1: always, 2: on failure only
    const stat = undeliverable.has(pdu.destination_addr) ? 'UNDELIV' : 'DELIVRD';
    if (opt['auto-receipts'] !== '0' && (wanted === 1 || (wanted === 2 && stat !== 'DELIVRD'))) {
      setTimeout(() => sendReceipt(byId.get(record.message_id), stat), Number(opt['receipt-delay-ms']));
    }
  });

  session.on('enquire_link', (pdu) => { event('enquire_link', { peer, sequence_number: pdu.sequence_number }); session.send(pdu.response()); });
  session.on('enquire_link_resp', (pdu) => event('enquire_link_resp', { peer, sequence_number: pdu.sequence_number }));
  session.on('unbind', (pdu) => { event('unbind', { peer }); session.send(pdu.response()); session.bound = null; session.close(); });
  session.on('unbind_resp', () => session.close());
  session.on('generic_nack', (pdu) => event('generic_nack', { peer, sequence_number: pdu.sequence_number, status: pdu.command_status }));
  session.on('pdu', (pdu) => {
    const handled = ['bind_transceiver', 'bind_transmitter', 'bind_receiver', 'submit_sm', 'enquire_link',
      'enquire_link_resp', 'unbind', 'unbind_resp', 'generic_nack', 'deliver_sm_resp'];
    if (handled.includes(pdu.command)) return;
    event('unsupported', { peer, command: pdu.command, command_id: pdu.command_id });
    if (pdu.isResponse()) return;
    session.send(pdu.command === 'unknown' ? pdu.response() : pdu.response({ command_status: 0x03 })); // ESME_RINVCMDID
  });
});
server.on('error', (e) => { console.error(`smsc-sim: ${e.message}`); process.exit(1); });

if (Number(opt['enquire-link-ms']) > 0) {
  setInterval(() => {
    for (const s of sessions) if (s.bound) s.enquire_link((resp) => event('enquire_link_resp', { system_id: s.system_id, status: resp.command_status }));
  }, Number(opt['enquire-link-ms']));
}

// ---- the HTTP control side
function readJson(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => { try { resolve(data ? JSON.parse(data) : {}); } catch (e) { reject(e); } });
  });
}
const control = http.createServer(async (req, res) => {
  const reply = (code, body) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(body) + '\n'); };
  try {
    const path = req.url.split('?')[0];
    if (req.method === 'GET' && path === '/health') {
      return reply(200, { ok: true, smpp_port: server.address().port, http_port: control.address().port,
        sessions: [...sessions].filter((s) => s.bound).map((s) => ({ system_id: s.system_id, bind: s.bound })) });
    }
    if (req.method === 'GET' && path === '/messages') return reply(200, messages);
    if (req.method === 'GET' && path === '/delivered') return reply(200, delivered);
    if (req.method === 'POST' && path === '/mo') {
      const b = await readJson(req);
      if (typeof b.text !== 'string' || !b.source_addr || !b.destination_addr) return reply(400, { error: 'text, source_addr and destination_addr are required' });
      const targets = [...sessions].filter((s) => (s.bound === 'transceiver' || s.bound === 'receiver') && (!b.system_id || s.system_id === b.system_id));
      if (!targets.length) return reply(409, { error: 'no bound session can receive' });
      const coding = b.data_coding !== undefined ? Number(b.data_coding) : (isGsm(b.text) ? 0x00 : 0x08);
      const statuses = await Promise.all(targets.map((s) => sendDeliver(s, {
        service_type: '',
        source_addr_ton: b.source_addr_ton !== undefined ? b.source_addr_ton : 1,
        source_addr_npi: b.source_addr_npi !== undefined ? b.source_addr_npi : 1,
        source_addr: b.source_addr,
        dest_addr_ton: b.dest_addr_ton !== undefined ? b.dest_addr_ton : 1,
        dest_addr_npi: b.dest_addr_npi !== undefined ? b.dest_addr_npi : 1,
        destination_addr: b.destination_addr,
        esm_class: 0x00, data_coding: coding, registered_delivery: 0,
        // node-smpp encodes a string by data_coding: 0 as GSM 03.38 (one septet a byte), 8 as UCS-2
        short_message: coding === 0x08 || coding === 0x00 ? b.text : Buffer.from(b.text, 'latin1'),
      }, 'mo', { text: b.text })));
      return reply(200, { sent: targets.length, statuses });
    }
    if (req.method === 'POST' && path === '/receipt') {
      const b = await readJson(req);
      const entry = byId.get(b.message_id);
      if (!entry) return reply(404, { error: 'unknown message_id' });
      const status = await sendReceipt(entry, b.stat || 'DELIVRD');
      return reply(200, { status });
    }
    return reply(404, { error: 'not found' });
  } catch (e) {
    return reply(500, { error: String(e && e.message || e) });
  }
});
control.on('error', (e) => { console.error(`smsc-sim control: ${e.message}`); process.exit(1); });

server.listen(Number(opt.port), opt.host, () => {
  control.listen(Number(opt['http-port']), opt.host, () => {
    process.stdout.write(`smsc-sim ready smpp=${opt.host}:${server.address().port} http=${opt.host}:${control.address().port}\n`);
  });
});
const stop = () => { for (const s of sessions) s.destroy(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
