// opamp-node-agent: a scriptable OpAMP agent over @elastic/opamp-client-node, driven
// exactly like test-deps/opamp-go's opamp-go-agent: the same flags, JSON commands on
// stdin and JSON events on stdout, so one test helper drives every agent.
//
//	{"cmd":"remote_config_status","status":"FAILED","error":"..."}
//	{"cmd":"description","identifying":{"k":"v"},"non_identifying":{"k":"v"}}
//	{"cmd":"stop"}
//
// Closing stdin stops the agent too, so a killed test leaves no orphan.
//
// What @elastic/opamp-client-node 0.5.0 cannot do, and so this agent does not either
// (from lib/opamp-client.js):
//
// - Health and effective config: createOpAMPClient throws for any capability beyond
//   ReportsStatus, ReportsHeartbeat, AcceptsRemoteConfig and ReportsRemoteConfig, and no
//   message it builds has a health or effective_config field. `--unhealthy` and
//   `--effective-config` are fatal errors; the `health` and `effective_config` commands
//   answer `error`.
// - Available components, own telemetry, packages, connection settings, commands, custom
//   messages: not implemented; `--components` is a fatal error.
// - Only HTTP: there is no WebSocket transport; a ws:// URL is a fatal error.
// - No callbacks for connecting, failing or server errors: this agent learns of them from
//   the client's diagnostics channels (diagEnabled, "experimental, unpromised message
//   structure" in its README). A ServerErrorResponse arrives there only as the text
//   "ServerErrorResponse <Type>: <message>", which `server_error` is parsed from.
// - onMessage receives only remoteConfig; a new instance uid from the server is adopted
//   silently.
// - After a failed request it waits at least 30 s (backoff 30 s .. 5 min) before trying
//   again, so an agent started before its server connects half a minute late.
// - shutdown() sends no AgentDisconnect; it only closes the HTTP client.
'use strict';

const readline = require('node:readline');
const {subscribe} = require('node:diagnostics_channel');
const {parseArgs} = require('node:util');

const {
    AgentCapabilities,
    DIAG_CH_SEND_FAIL,
    DIAG_CH_SEND_SUCCESS,
    RemoteConfigStatuses,
    createOpAMPClient,
} = require('@elastic/opamp-client-node');

const NAME = 'opamp-node-agent';
const LIBRARY = '@elastic/opamp-client-node';

class Unsupported extends Error {}

function emit(event, fields = {}) {
    const line = JSON.stringify({...fields, event, time: new Date().toISOString()});
    process.stdout.write(line + '\n');
}

const hex = (bytes) => Buffer.from(bytes).toString('hex');

function uuidString(bytes) {
    const h = hex(bytes);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// A Go duration such as "1s", "500ms" or "1m30s", in seconds.
function parseDuration(text) {
    const units = {ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600};
    const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/gy;
    let seconds = 0;
    let end = 0;
    for (const m of text.matchAll(re)) {
        seconds += Number(m[1]) * units[m[2]];
        end = m.index + m[0].length;
    }
    if (end === 0 || end !== text.length) {
        throw new Error(`invalid duration ${JSON.stringify(text)}`);
    }
    return seconds;
}

function keyValues(items, flag) {
    const out = {};
    for (const item of items ?? []) {
        const i = item.indexOf('=');
        if (i <= 0) {
            throw new Error(`--${flag}: want key=value, got ${JSON.stringify(item)}`);
        }
        out[item.slice(0, i)] = item.slice(i + 1);
    }
    return out;
}

// The client's pino-style log calls, (fields, message) or (message), as `log` events.
function logger(verbose) {
    const log = (level) => (first, ...rest) => {
        const parts = [];
        for (const arg of [first, ...rest]) {
            if (typeof arg === 'string') {
                parts.push(arg);
            } else if (arg instanceof Error) {
                parts.push(arg.message);
            } else if (arg?.err) {
                parts.push(String(arg.err.message ?? arg.err));
            }
        }
        emit('log', {level, message: parts.join(': ')});
    };
    const quiet = () => {};
    return {
        trace: verbose ? log('trace') : quiet,
        debug: verbose ? log('debug') : quiet,
        info: verbose ? log('info') : quiet,
        warn: log('warn'),
        error: log('error'),
        fatal: log('fatal'),
    };
}

function flags() {
    const {values} = parseArgs({
        options: {
            url: {type: 'string', default: 'http://127.0.0.1:4320/v1/opamp'},
            'instance-uid': {type: 'string', default: ''},
            'service-name': {type: 'string', default: NAME},
            heartbeat: {type: 'string', default: '30s'},
            apply: {type: 'string', default: 'accept'},
            'effective-config': {type: 'string', default: ''},
            unhealthy: {type: 'boolean', default: false},
            components: {type: 'string', default: ''},
            verbose: {type: 'boolean', default: false},
            attr: {type: 'string', multiple: true},
            'non-identifying': {type: 'string', multiple: true},
            header: {type: 'string', multiple: true},
        },
        strict: true,
        allowPositionals: false,
    });
    return values;
}

function main() {
    const f = flags();
    const url = new URL(f.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        throw new Unsupported(`--url ${f.url}: ${LIBRARY} speaks plain HTTP only`);
    }
    if (!['accept', 'fail', 'ignore'].includes(f.apply)) {
        throw new Error(`--apply must be accept, fail or ignore, not ${JSON.stringify(f.apply)}`);
    }
    if (f.unhealthy) {
        throw new Unsupported(`--unhealthy: ${LIBRARY} cannot report health`);
    }
    if (f['effective-config']) {
        throw new Unsupported(`--effective-config: ${LIBRARY} cannot report effective config`);
    }
    if (f.components) {
        throw new Unsupported(`--components: ${LIBRARY} cannot report available components`);
    }
    let instanceUid;
    if (f['instance-uid']) {
        instanceUid = Uint8Array.from(Buffer.from(f['instance-uid'], 'hex'));
        if (instanceUid.length !== 16) {
            throw new Error('--instance-uid must be 32 hex digits');
        }
    }
    const identifying = keyValues(f.attr, 'attr');
    const nonIdentifying = keyValues(f['non-identifying'], 'non-identifying');
    const headers = keyValues(f.header, 'header');

    let lastHash = null;
    const applyRemoteConfig = (client, rc) => {
        if (f.apply === 'ignore') {
            return;
        }
        const status =
            f.apply === 'fail'
                ? RemoteConfigStatuses.RemoteConfigStatuses_FAILED
                : RemoteConfigStatuses.RemoteConfigStatuses_APPLIED;
        client.setRemoteConfigStatus({
            status,
            lastRemoteConfigHash: rc.configHash,
            errorMessage: f.apply === 'fail' ? `rejected by ${NAME} --apply=fail` : '',
        });
        emit('remote_config_status', {
            status: RemoteConfigStatuses[status],
            config_hash: hex(rc.configHash),
        });
    };

    const client = createOpAMPClient({
        endpoint: f.url,
        headers,
        instanceUid,
        heartbeatIntervalSeconds: parseDuration(f.heartbeat),
        capabilities: BigInt(
            AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig |
                AgentCapabilities.AgentCapabilities_ReportsRemoteConfig
        ),
        log: logger(f.verbose),
        diagEnabled: true,
        onMessage: ({remoteConfig}) => {
            if (!remoteConfig) {
                return;
            }
            const files = {};
            for (const [name, file] of Object.entries(remoteConfig.config?.configMap ?? {})) {
                files[name] = {
                    content_type: file.contentType,
                    body: Buffer.from(file.body).toString('utf8'),
                };
            }
            emit('message', {
                remote_config: {config_hash: hex(remoteConfig.configHash), files},
            });
            lastHash = remoteConfig.configHash;
            applyRemoteConfig(client, remoteConfig);
        },
    });
    const uid = client.getInstanceUid();
    const mine = (m) => m.instanceUidStr === uuidString(client.getInstanceUid());

    let connected = false;
    subscribe(DIAG_CH_SEND_SUCCESS, (m) => {
        if (mine(m) && !connected) {
            connected = true;
            emit('connected');
        }
    });
    subscribe(DIAG_CH_SEND_FAIL, (m) => {
        if (!mine(m)) {
            return;
        }
        const err = typeof m.err === 'string' ? m.err : String(m.err?.message ?? m.err);
        const server = /^ServerErrorResponse (?:unexpected type: )?(\w+)(?:: ([\s\S]*))?$/.exec(err);
        if (server) {
            const type = /^\d+$/.test(server[1]) ? server[1] : `ServerErrorResponseType_${server[1]}`;
            emit('server_error', {type, message: server[2] ?? ''});
        } else {
            connected = false;
            emit('connect_failed', {error: err});
        }
    });

    client.setAgentDescription({
        identifyingAttributes: {
            ...identifying,
            'service.name': f['service-name'],
            'service.instance.id': uuidString(uid),
        },
        nonIdentifyingAttributes: nonIdentifying,
    });
    client.start();
    emit('started', {instance_uid: hex(uid), transport: 'http'});

    const handle = (c) => {
        switch (c.cmd) {
            case 'stop':
                return false;
            case 'health':
                throw new Unsupported(`${LIBRARY} cannot report health`);
            case 'effective_config':
                throw new Unsupported(`${LIBRARY} cannot report effective config`);
            case 'remote_config_status': {
                const status = RemoteConfigStatuses[`RemoteConfigStatuses_${c.status}`];
                if (status === undefined) {
                    throw new Error(`unknown remote config status ${JSON.stringify(c.status)}`);
                }
                if (!lastHash) {
                    throw new Error(`${LIBRARY} needs the hash of an offered config first`);
                }
                client.setRemoteConfigStatus({
                    status,
                    lastRemoteConfigHash: lastHash,
                    errorMessage: c.error ?? '',
                });
                return true;
            }
            case 'description':
                client.setAgentDescription({
                    identifyingAttributes: c.identifying ?? {},
                    nonIdentifyingAttributes: c.non_identifying ?? {},
                });
                return true;
            default:
                throw new Error(`unknown command ${JSON.stringify(c.cmd)}`);
        }
    };

    let stopping = false;
    const stop = async () => {
        if (stopping) {
            return;
        }
        stopping = true;
        rl.close();
        try {
            await client.shutdown();
            emit('stopped');
            process.exit(0);
        } catch (err) {
            emit('stopped');
            emit('fatal', {error: String(err?.message ?? err)});
            process.exit(1);
        }
    };
    const rl = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
    rl.on('line', (line) => {
        if (stopping || !line.trim()) {
            return;
        }
        let c = {cmd: 'stdin'};
        let more = true;
        try {
            c = JSON.parse(line);
            if (typeof c !== 'object' || c === null || Array.isArray(c)) {
                c = {cmd: 'stdin'};
                throw new Error('a command is a JSON object');
            }
            more = handle(c);
        } catch (err) {
            emit('error', {op: String(c.cmd ?? 'stdin'), error: err.message});
            return;
        }
        emit('done', {cmd: c.cmd});
        if (!more) {
            stop();
        }
    });
    rl.on('close', stop);
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

try {
    main();
} catch (err) {
    emit('fatal', {error: String(err?.message ?? err)});
    process.exit(1);
}
