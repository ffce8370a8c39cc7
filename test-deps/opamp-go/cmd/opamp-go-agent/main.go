// Command opamp-go-agent is a scriptable OpAMP agent built on opamp-go's client, used
// by the interop tests as a real peer that is not written in Python.
//
// It connects over WebSocket (ws://, wss://) or plain HTTP (http://, https://),
// reports what its flags and the test ask, and prints one JSON object per line for
// every event it sees. Tests drive it with JSON commands on stdin, one per line:
//
//	{"cmd":"health","healthy":false,"status":"degraded","last_error":"..."}
//	{"cmd":"effective_config","body":"receivers: ..."}
//	{"cmd":"remote_config_status","status":"FAILED","error":"..."}
//	{"cmd":"description","identifying":{"k":"v"},"non_identifying":{"k":"v"}}
//	{"cmd":"stop"}
//
// Closing stdin stops the agent too, so a killed test leaves no orphan.
//
// Over wss:// and https:// it trusts only --ca-file's CAs (the system's without it) and
// presents --cert-file/--key-file as its client certificate. Each handshake in which it
// has verified the server is printed as a "tls_handshake" event with the server
// certificate's serial (the server may still refuse the client's certificate after it),
// so a test sees which certificate a server presented and when the agent reconnected.
//
// With --opamp-settings it declares AcceptsOpAMPConnectionSettings. opamp-go itself
// applies an offered heartbeat interval (as heartbeat, or as polling interval over
// HTTP) to an agent that reports heartbeats; the agent checks the offer as
// opampsupervisor does (a ws, wss, http or https destination_endpoint) and prints it as
// an "opamp_connection_settings" event. "apply" keeps the connection; "reconnect" does
// what opampsupervisor v0.149.0 does: stops its client and starts a new one with only
// what the offer carries (its endpoint and headers; no certificate offered: TLS without
// verification and without a client certificate), printing "reconnecting" first.
//
// With --accept-packages it declares AcceptsPackages and ReportsPackageStatuses and gives
// opamp-go an in-memory PackagesStateProvider; an offer is printed as a
// "packages_available" event (names, types, versions, urls, hashes in hex) and handed to
// opamp-go's PackagesSyncer, which downloads each new package's file (HTTP GET with the
// offered headers; --download-timeout bounds each) and reports PackageStatuses itself
// (Installing, Downloading, then Installed or InstallFailed with its error). opamp-go does
// not check a file against DownloadableFile.content_hash: the provider does (SHA-256) and
// refuses a mismatch, so the package is InstallFailed. Installing a top-level package
// means running it: the agent sets its identifying attribute service.version to the
// package version and sends the new description (same instance uid), printing
// "package_installed" (name, version, type, hash); a package that failed is printed as
// "package_install_failed" (name, version, hash, error) once the sync is over. (opamp-go
// v0.23.0 takes package capabilities only through a deprecated start setting, so such an
// agent prints one "log" event of level error saying so when it starts.)
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"

	"opamp-operator.test/opamp-go/internal/jsonl"
)

// kvFlag collects repeated key=value flags.
type kvFlag map[string]string

func (f kvFlag) String() string { return fmt.Sprint(map[string]string(f)) }

func (f kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	f[k] = v
	return nil
}

func keyValues(m map[string]string) []*protobufs.KeyValue {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*protobufs.KeyValue, 0, len(keys))
	for _, k := range keys {
		out = append(out, &protobufs.KeyValue{
			Key:   k,
			Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: m[k]}},
		})
	}
	return out
}

// agent holds what the agent reports; the client reads it through callbacks.
type agent struct {
	mu              sync.Mutex
	out             *jsonl.Emitter
	client          client.OpAMPClient
	applyMode       string
	failContaining  string
	effectiveConfig map[string]*protobufs.AgentConfigFile
	// What a new client (--opamp-settings=reconnect) starts from.
	start         func(types.StartSettings) (client.OpAMPClient, error)
	settings      types.StartSettings
	opampSettings string
	lastStatus    *protobufs.RemoteConfigStatus
	description   *protobufs.AgentDescription
	health        *protobufs.ComponentHealth
	// With --accept-packages: where opamp-go keeps packages, and the context a package
	// download runs in (the agent's, not a message callback's).
	packages *packageStore
	ctx      context.Context
}

// current is the client in use (a reconnect replaces it).
func (a *agent) current() client.OpAMPClient {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.client
}

// onOpampConnectionSettings checks an offer as opampsupervisor does (its server config
// must validate: a ws, wss, http or https endpoint) and, with --opamp-settings=reconnect,
// reconnects with it; an error is reported FAILED by opamp-go (with
// --report-settings-status). The heartbeat interval was applied by opamp-go already.
func (a *agent) onOpampConnectionSettings(_ context.Context, s *protobufs.OpAMPConnectionSettings) error {
	fields := map[string]any{
		"destination_endpoint":       s.DestinationEndpoint,
		"heartbeat_interval_seconds": s.HeartbeatIntervalSeconds,
		"headers":                    len(s.GetHeaders().GetHeaders()),
		"certificate":                s.Certificate != nil,
		"tls":                        s.Tls != nil,
	}
	u, err := url.Parse(s.DestinationEndpoint)
	if err == nil && s.DestinationEndpoint == "" {
		err = fmt.Errorf("destination_endpoint is empty")
	} else if err == nil && u.Scheme != "ws" && u.Scheme != "wss" && u.Scheme != "http" && u.Scheme != "https" {
		err = fmt.Errorf("destination_endpoint scheme %q: want ws, wss, http or https", u.Scheme)
	}
	if err != nil {
		fields["error"] = err.Error()
	}
	a.out.Emit("opamp_connection_settings", fields)
	if err != nil || a.opampSettings != "reconnect" {
		return err
	}
	// As the supervisor: from another goroutine (this one belongs to the client).
	go a.reconnect(s)
	return nil
}

// reconnect stops the client and starts one with what the offer carries, nothing else.
func (a *agent) reconnect(s *protobufs.OpAMPConnectionSettings) {
	settings := a.settings
	settings.OpAMPServerURL = s.DestinationEndpoint
	settings.Header = http.Header{}
	for _, h := range s.GetHeaders().GetHeaders() {
		settings.Header.Add(h.Key, h.Value)
	}
	settings.TLSConfig = nil
	if strings.HasPrefix(s.DestinationEndpoint, "wss:") || strings.HasPrefix(s.DestinationEndpoint, "https:") {
		//nolint:gosec // what opampsupervisor does when an offer carries no certificate
		settings.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	}
	heartbeat := time.Duration(s.HeartbeatIntervalSeconds) * time.Second
	settings.HeartbeatInterval = &heartbeat
	a.mu.Lock()
	old := a.client
	settings.RemoteConfigStatus = a.lastStatus
	a.mu.Unlock()
	a.out.Emit("reconnecting", map[string]any{"url": s.DestinationEndpoint, "headers": len(settings.Header)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := old.Stop(ctx); err != nil {
		a.out.Emit("error", map[string]any{"op": "reconnect stop", "error": err.Error()})
	}
	c, err := a.start(settings)
	if err != nil {
		a.out.Emit("error", map[string]any{"op": "reconnect start", "error": err.Error()})
		return
	}
	a.mu.Lock()
	a.client = c
	a.mu.Unlock()
}

func (a *agent) getEffectiveConfig(context.Context) (*protobufs.EffectiveConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	files := make(map[string]*protobufs.AgentConfigFile, len(a.effectiveConfig))
	for k, v := range a.effectiveConfig {
		files[k] = v
	}
	return &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{ConfigMap: files}}, nil
}

func configFilesJSON(m *protobufs.AgentConfigMap) map[string]any {
	files := map[string]any{}
	if m == nil {
		return files
	}
	for name, f := range m.ConfigMap {
		files[name] = map[string]any{"content_type": f.ContentType, "body": string(f.Body)}
	}
	return files
}

func (a *agent) onMessage(ctx context.Context, msg *types.MessageData) {
	fields := map[string]any{}
	if rc := msg.RemoteConfig; rc != nil {
		fields["remote_config"] = map[string]any{
			"config_hash": hex.EncodeToString(rc.ConfigHash),
			"files":       configFilesJSON(rc.Config),
		}
	}
	if id := msg.AgentIdentification; id != nil {
		// opamp-go adopts the new uid itself; the test only needs to see it.
		fields["agent_identification"] = hex.EncodeToString(id.NewInstanceUid)
	}
	if msg.OwnMetricsConnSettings != nil || msg.OtherConnSettings != nil || msg.OfferedConnectionsSettingsHash != nil {
		fields["connection_settings_hash"] = hex.EncodeToString(msg.OfferedConnectionsSettingsHash)
	}
	if msg.PackagesAvailable != nil {
		fields["packages_available"] = len(msg.PackagesAvailable.Packages)
	}
	if msg.CustomMessage != nil {
		fields["custom_message"] = map[string]any{
			"capability": msg.CustomMessage.Capability, "type": msg.CustomMessage.Type,
			"data": string(msg.CustomMessage.Data),
		}
	}
	a.out.Emit("message", fields)
	if msg.PackagesAvailable != nil {
		a.out.Emit("packages_available", packagesAvailableJSON(msg.PackagesAvailable))
		// opamp-go sets PackageSyncer only for an agent that declared AcceptsPackages.
		if msg.PackageSyncer != nil {
			a.syncPackages(msg.PackagesAvailable, msg.PackageSyncer)
		}
	}
	if msg.RemoteConfig != nil {
		a.applyRemoteConfig(ctx, msg.RemoteConfig)
	}
}

// applyRemoteConfig reacts to an offered config as --apply says: accept it as the
// effective config, report it FAILED, or leave it unanswered (a stuck agent).
func (a *agent) applyRemoteConfig(ctx context.Context, rc *protobufs.AgentRemoteConfig) {
	status := &protobufs.RemoteConfigStatus{LastRemoteConfigHash: rc.ConfigHash}
	mode := a.applyMode
	if a.failContaining != "" && rc.Config != nil {
		for _, f := range rc.Config.ConfigMap {
			if strings.Contains(string(f.Body), a.failContaining) {
				mode = "fail"
			}
		}
	}
	switch mode {
	case "ignore":
		return
	case "fail":
		status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
		status.ErrorMessage = "rejected by opamp-go-agent (--apply=fail or --fail-containing)"
	default:
		a.mu.Lock()
		a.effectiveConfig = map[string]*protobufs.AgentConfigFile{}
		if rc.Config != nil {
			for k, v := range rc.Config.ConfigMap {
				a.effectiveConfig[k] = v
			}
		}
		a.mu.Unlock()
		status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED
	}
	a.mu.Lock()
	a.lastStatus = status
	a.mu.Unlock()
	if err := a.current().SetRemoteConfigStatus(status); err != nil {
		a.out.Emit("error", map[string]any{"op": "SetRemoteConfigStatus", "error": err.Error()})
	}
	if mode != "fail" {
		if err := a.current().UpdateEffectiveConfig(ctx); err != nil {
			a.out.Emit("error", map[string]any{"op": "UpdateEffectiveConfig", "error": err.Error()})
		}
	}
	a.out.Emit("remote_config_status", map[string]any{
		"status": status.Status.String(), "config_hash": hex.EncodeToString(rc.ConfigHash),
	})
}

// opampSettingsFlags say whether and how the agent takes OpAMP connection settings.
type opampSettingsFlags struct {
	mode         string // "", apply, reconnect
	reportStatus bool
}

const packageCaps = protobufs.AgentCapabilities_AgentCapabilities_AcceptsPackages |
	protobufs.AgentCapabilities_AgentCapabilities_ReportsPackageStatuses

// packageFlags say whether the agent takes packages, and how long a download may take.
type packageFlags struct {
	accept          bool
	downloadTimeout time.Duration
}

// tlsFlags are the agent's TLS settings for wss:// and https:// URLs.
type tlsFlags struct {
	caFile, certFile, keyFile string
}

func (f tlsFlags) given() bool { return f.caFile != "" || f.certFile != "" || f.keyFile != "" }

// config builds the client's tls.Config: TLS 1.2+, the CAs of --ca-file (or the system's),
// the client certificate, and a report of every handshake. Certificate verification is
// Go's own (chain and host name); VerifyConnection only observes what was verified.
func (f tlsFlags) config(out *jsonl.Emitter) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", f.caFile)
		}
	}
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, fmt.Errorf("--cert-file and --key-file go together")
	}
	if f.certFile != "" {
		pair, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file/--key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		fields := map[string]any{"version": tls.VersionName(cs.Version), "resumed": cs.DidResume}
		if len(cs.PeerCertificates) > 0 {
			leaf := cs.PeerCertificates[0]
			fields["serial"] = leaf.SerialNumber.Text(16)
			fields["subject"] = leaf.Subject.CommonName
			fields["issuer"] = leaf.Issuer.CommonName
		}
		out.Emit("tls_handshake", fields)
		return nil
	}
	return cfg, nil
}

type command struct {
	Cmd            string            `json:"cmd"`
	Healthy        *bool             `json:"healthy"`
	Status         string            `json:"status"`
	LastError      string            `json:"last_error"`
	Body           *string           `json:"body"`
	Error          string            `json:"error"`
	Identifying    map[string]string `json:"identifying"`
	NonIdentifying map[string]string `json:"non_identifying"`
}

// handle runs one stdin command; it returns false when the agent should stop.
func (a *agent) handle(ctx context.Context, c command) (bool, error) {
	switch c.Cmd {
	case "stop":
		return false, nil
	case "health":
		h := &protobufs.ComponentHealth{Healthy: c.Healthy == nil || *c.Healthy, Status: c.Status,
			LastError: c.LastError, StatusTimeUnixNano: uint64(time.Now().UnixNano())}
		a.mu.Lock()
		a.health = h
		a.mu.Unlock()
		return true, a.current().SetHealth(h)
	case "effective_config":
		if c.Body == nil {
			return true, fmt.Errorf("effective_config needs body")
		}
		a.mu.Lock()
		a.effectiveConfig = map[string]*protobufs.AgentConfigFile{
			"": {Body: []byte(*c.Body), ContentType: "text/yaml"},
		}
		a.mu.Unlock()
		return true, a.current().UpdateEffectiveConfig(ctx)
	case "remote_config_status":
		v, ok := protobufs.RemoteConfigStatuses_value["RemoteConfigStatuses_"+c.Status]
		if !ok {
			return true, fmt.Errorf("unknown remote config status %q", c.Status)
		}
		return true, a.current().SetRemoteConfigStatus(&protobufs.RemoteConfigStatus{
			Status: protobufs.RemoteConfigStatuses(v), ErrorMessage: c.Error})
	case "description":
		d := &protobufs.AgentDescription{
			IdentifyingAttributes: keyValues(c.Identifying), NonIdentifyingAttributes: keyValues(c.NonIdentifying)}
		a.mu.Lock()
		a.description = d
		a.mu.Unlock()
		return true, a.current().SetAgentDescription(d)
	default:
		return true, fmt.Errorf("unknown command %q", c.Cmd)
	}
}

func main() {
	identifying, nonIdentifying, headers := kvFlag{}, kvFlag{}, kvFlag{}
	serverURL := flag.String("url", "ws://127.0.0.1:4320/v1/opamp", "OpAMP server URL: ws(s):// for WebSocket, http(s):// for plain HTTP")
	uidHex := flag.String("instance-uid", "", "16-byte instance uid as 32 hex digits (default: a new UUIDv7)")
	serviceName := flag.String("service-name", "opamp-go-agent", "service.name identifying attribute")
	heartbeat := flag.Duration("heartbeat", 30*time.Second, "heartbeat (WebSocket) or polling (HTTP) interval")
	applyMode := flag.String("apply", "accept", "what to do with an offered remote config: accept | fail | ignore")
	initialConfig := flag.String("effective-config", "", "initial effective config body (YAML)")
	unhealthy := flag.Bool("unhealthy", false, "report unhealthy at start")
	components := flag.String("components", "", "comma-separated kind/type pairs reported as AvailableComponents, e.g. receivers/otlp,exporters/debug")
	verbose := flag.Bool("verbose", false, "also print the client's debug log")
	failContaining := flag.String("fail-containing", "", "report FAILED for an offered config whose body contains this text (and apply others)")
	acceptRestart := flag.Bool("accept-restart", false, "declare AcceptsRestartCommand (a received command is printed, nothing restarts)")
	var of opampSettingsFlags
	flag.StringVar(&of.mode, "opamp-settings", "", "declare AcceptsOpAMPConnectionSettings: apply (keep the connection) | reconnect (as opampsupervisor: a new client with what the offer carries)")
	flag.BoolVar(&of.reportStatus, "report-settings-status", false, "declare ReportsConnectionSettingsStatus (opamp-go reports APPLYING, then APPLIED or FAILED)")
	var pf packageFlags
	flag.BoolVar(&pf.accept, "accept-packages", false, "declare AcceptsPackages and ReportsPackageStatuses: opamp-go downloads offered packages, the agent checks their SHA-256 and runs a top-level one (service.version becomes its version)")
	flag.DurationVar(&pf.downloadTimeout, "download-timeout", 60*time.Second, "with --accept-packages: the longest a package download may take")
	flag.Var(identifying, "attr", "identifying attribute key=value (repeatable)")
	flag.Var(nonIdentifying, "non-identifying", "non-identifying attribute key=value (repeatable)")
	flag.Var(headers, "header", "HTTP header key=value sent with every request (repeatable)")
	var tf tlsFlags
	flag.StringVar(&tf.caFile, "ca-file", "", "wss/https: PEM CAs to trust instead of the system's")
	flag.StringVar(&tf.certFile, "cert-file", "", "wss/https: client certificate (PEM) to present")
	flag.StringVar(&tf.keyFile, "key-file", "", "wss/https: the client certificate's key (PEM)")
	flag.Parse()

	out := jsonl.New(os.Stdout)
	if err := run(out, *serverURL, *uidHex, *serviceName, *heartbeat, *applyMode, *initialConfig,
		*unhealthy, *components, *verbose, *acceptRestart, *failContaining, identifying, nonIdentifying, headers, tf, of, pf); err != nil {
		out.Emit("fatal", map[string]any{"error": err.Error()})
		os.Exit(1)
	}
}

func parseComponents(spec string) (*protobufs.AvailableComponents, error) {
	kinds := map[string]*protobufs.ComponentDetails{}
	for _, item := range strings.Split(spec, ",") {
		kind, typ, ok := strings.Cut(strings.TrimSpace(item), "/")
		if !ok {
			return nil, fmt.Errorf("component %q: want kind/type", item)
		}
		if kinds[kind] == nil {
			kinds[kind] = &protobufs.ComponentDetails{SubComponentMap: map[string]*protobufs.ComponentDetails{}}
		}
		kinds[kind].SubComponentMap[typ] = &protobufs.ComponentDetails{}
	}
	return &protobufs.AvailableComponents{Components: kinds, Hash: []byte(spec)}, nil
}

func run(out *jsonl.Emitter, serverURL, uidHex, serviceName string, heartbeat time.Duration, applyMode,
	initialConfig string, unhealthy bool, components string, verbose, acceptRestart bool, failContaining string,
	identifying, nonIdentifying, headers kvFlag, tf tlsFlags, of opampSettingsFlags, pf packageFlags) error {
	u, err := url.Parse(serverURL)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	if applyMode != "accept" && applyMode != "fail" && applyMode != "ignore" {
		return fmt.Errorf("--apply must be accept, fail or ignore, not %q", applyMode)
	}
	if of.mode != "" && of.mode != "apply" && of.mode != "reconnect" {
		return fmt.Errorf("--opamp-settings must be apply or reconnect, not %q", of.mode)
	}
	log := &jsonl.Logger{Out: out, Verbose: verbose}
	transport := "websocket"
	switch u.Scheme {
	case "ws", "wss":
	case "http", "https":
		transport = "http"
	default:
		return fmt.Errorf("--url scheme %q: want ws, wss, http or https", u.Scheme)
	}
	// opamp-go turns ws:// into wss:// when given a TLS config: refuse TLS flags on a
	// plaintext URL rather than let a test of plaintext quietly speak TLS.
	secure := u.Scheme == "wss" || u.Scheme == "https"
	if tf.given() && !secure {
		return fmt.Errorf("--ca-file, --cert-file and --key-file need a wss:// or https:// URL, not %s://", u.Scheme)
	}
	var tlsConfig *tls.Config
	if secure {
		if tlsConfig, err = tf.config(out); err != nil {
			return err
		}
	}

	var uid types.InstanceUid
	if uidHex != "" {
		b, err := hex.DecodeString(uidHex)
		if err != nil || len(b) != 16 {
			return fmt.Errorf("--instance-uid must be 32 hex digits")
		}
		copy(uid[:], b)
	} else {
		v7, err := uuid.NewV7()
		if err != nil {
			return err
		}
		uid = types.InstanceUid(v7)
	}

	a := &agent{out: out, applyMode: applyMode, failContaining: failContaining,
		effectiveConfig: map[string]*protobufs.AgentConfigFile{}, opampSettings: of.mode}
	if initialConfig != "" {
		a.effectiveConfig[""] = &protobufs.AgentConfigFile{Body: []byte(initialConfig), ContentType: "text/yaml"}
	}
	identifying["service.name"] = serviceName
	identifying["service.instance.id"] = uuid.UUID(uid).String()
	caps := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat
	if acceptRestart {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsRestartCommand
	}
	if of.mode != "" {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_AcceptsOpAMPConnectionSettings
	}
	if of.reportStatus {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_ReportsConnectionSettingsStatus
	}
	// opamp-go refuses either capability without a PackagesStateProvider, and a provider
	// without both.
	var packages types.PackagesStateProvider
	if pf.accept {
		caps |= packageCaps
		a.packages = newPackageStore(a.install)
		packages = a.packages
	}
	var available *protobufs.AvailableComponents
	if components != "" {
		caps |= protobufs.AgentCapabilities_AgentCapabilities_ReportsAvailableComponents
		if available, err = parseComponents(components); err != nil {
			return err
		}
	}
	a.description = &protobufs.AgentDescription{
		IdentifyingAttributes: keyValues(identifying), NonIdentifyingAttributes: keyValues(nonIdentifying),
	}
	a.health = &protobufs.ComponentHealth{Healthy: !unhealthy, StartTimeUnixNano: uint64(time.Now().UnixNano())}

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	a.ctx = ctx
	// A client for `settings`: at start, and again on a reconnect (--opamp-settings).
	a.start = func(settings types.StartSettings) (client.OpAMPClient, error) {
		var c client.OpAMPClient
		if strings.HasPrefix(settings.OpAMPServerURL, "http") {
			c = client.NewHTTP(log)
		} else {
			c = client.NewWebSocket(log)
		}
		a.mu.Lock()
		description, health := a.description, a.health
		a.mu.Unlock()
		if err := c.SetAgentDescription(description); err != nil {
			return nil, err
		}
		// opamp-go refuses a capability whose state is not set yet, so health comes first.
		if err := c.SetHealth(health); err != nil {
			return nil, err
		}
		if available != nil {
			if err := c.SetAvailableComponents(available); err != nil {
				return nil, err
			}
		}
		// opamp-go v0.23.0's SetCapabilities refuses the package capabilities until Start
		// has the PackagesStateProvider, so those go through the deprecated
		// StartSettings.Capabilities, which Start applies with the provider (and logs an
		// error saying it is deprecated): the first message has them all.
		base := caps &^ packageCaps
		if err := c.SetCapabilities(&base); err != nil {
			return nil, err
		}
		if caps&packageCaps != 0 {
			settings.Capabilities = caps
		}
		if hc, ok := c.(interface{ SetPollingInterval(time.Duration) }); ok {
			hc.SetPollingInterval(*settings.HeartbeatInterval)
		}
		if err := c.Start(ctx, settings); err != nil {
			return nil, fmt.Errorf("start: %w", err)
		}
		return c, nil
	}

	header := http.Header{}
	for k, v := range headers {
		header.Set(k, v)
	}
	a.settings = types.StartSettings{
		OpAMPServerURL:    serverURL,
		Header:            header,
		InstanceUid:       uid,
		HeartbeatInterval: &heartbeat,
		TLSConfig:         tlsConfig,
		// nil without --accept-packages: an interface holding a nil *packageStore is not nil.
		PackagesStateProvider: packages,
		Callbacks: types.Callbacks{
			OnConnect: func(context.Context) { out.Emit("connected", nil) },
			OnConnectFailed: func(_ context.Context, err error) {
				out.Emit("connect_failed", map[string]any{"error": err.Error()})
			},
			OnError: func(_ context.Context, e *protobufs.ServerErrorResponse) {
				out.Emit("server_error", map[string]any{"type": e.Type.String(), "message": e.ErrorMessage})
			},
			OnMessage:          a.onMessage,
			GetEffectiveConfig: a.getEffectiveConfig,
			OnCommand: func(_ context.Context, cmd *protobufs.ServerToAgentCommand) error {
				out.Emit("command", map[string]any{"type": cmd.Type.String()})
				return nil
			},
			OnOpampConnectionSettings: a.onOpampConnectionSettings,
			// opamp-go's default download client has no timeout at all.
			DownloadHTTPClient: func(context.Context, *protobufs.DownloadableFile) (*http.Client, error) {
				return &http.Client{Timeout: pf.downloadTimeout}, nil
			},
		},
	}
	c, err := a.start(a.settings)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.client = c
	a.mu.Unlock()
	out.Emit("started", map[string]any{"instance_uid": hex.EncodeToString(uid[:]), "transport": transport})

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case line, ok := <-lines:
			if !ok {
				break loop
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			var cmd command
			if err := json.Unmarshal([]byte(line), &cmd); err != nil {
				out.Emit("error", map[string]any{"op": "stdin", "error": err.Error()})
				continue
			}
			more, err := a.handle(ctx, cmd)
			if err != nil {
				out.Emit("error", map[string]any{"op": cmd.Cmd, "error": err.Error()})
			} else {
				out.Emit("done", map[string]any{"cmd": cmd.Cmd})
			}
			if !more {
				break loop
			}
		}
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer stopCancel()
	err = a.current().Stop(stopCtx)
	out.Emit("stopped", nil)
	return err
}
