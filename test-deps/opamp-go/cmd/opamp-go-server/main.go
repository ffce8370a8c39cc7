// Command opamp-go-server is opamp-go's reference OpAMP server wrapped for tests: it
// serves WebSocket and plain HTTP on one path, offers a config file to every agent that
// accepts remote config, and prints what agents report as JSON lines.
//
// It is the independent peer the test world needs before (and beside) our own server:
// the proof tests connect real agents to it, and benchmarks can measure our server
// against it in the same run. SIGHUP re-reads the config file and pushes it to every
// WebSocket agent at once; --quiet drops the per-message events so a benchmark measures
// the server, not its printing.
//
// With --package-url, --package-sha256 and --package-version it also offers one top-level
// package (named --package-name, empty by default; --package-header adds a header the
// agent must send with its download) to every agent that accepts packages. The server
// computes the package hash and the all-packages hash, as the spec has it; the file's
// content_hash is the --package-sha256 given (so a test can offer a wrong one). It offers
// again only when an agent reports a server_provided_all_packages_hash that is not the
// offer's (or never reports one), and prints each offer as "packages_offered"; the
// agents' PackageStatuses are in their "agent_message" events ("package_statuses").
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/open-telemetry/opamp-go/protobufs"
	"github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"

	"opamp-operator.test/opamp-go/internal/jsonl"
)

type offer struct {
	remote *protobufs.AgentRemoteConfig
}

// packageFlags describe the one package offered, if any.
type packageFlags struct {
	url, sha256, version, name string
	headers                    kvFlag
}

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

// packageOffer builds the PackagesAvailable for the flags (nil when no package is
// offered). The package hash covers every field of the offer and the file's hash; the
// all-packages hash covers each package's name and hash, in name order (one here).
func packageOffer(f packageFlags) (*protobufs.PackagesAvailable, error) {
	if f.url == "" && f.sha256 == "" && f.version == "" {
		return nil, nil
	}
	if f.url == "" || f.version == "" {
		return nil, fmt.Errorf("--package-url, --package-sha256 and --package-version go together")
	}
	content, err := hex.DecodeString(f.sha256)
	if err != nil || len(content) != sha256.Size {
		return nil, fmt.Errorf("--package-sha256 must be 64 hex digits")
	}
	file := &protobufs.DownloadableFile{DownloadUrl: f.url, ContentHash: content}
	keys := make([]string, 0, len(f.headers))
	for k := range f.headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		file.Headers = &protobufs.Headers{}
	}
	h := sha256.New()
	typ := protobufs.PackageType_PackageType_TopLevel
	for _, part := range []string{f.name, typ.String(), f.version, f.url, string(content)} {
		fmt.Fprintf(h, "%d:%s", len(part), part)
	}
	for _, k := range keys {
		file.Headers.Headers = append(file.Headers.Headers, &protobufs.Header{Key: k, Value: f.headers[k]})
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(f.headers[k]), f.headers[k])
	}
	pkg := &protobufs.PackageAvailable{Type: typ, Version: f.version, File: file, Hash: h.Sum(nil)}
	all := sha256.New()
	fmt.Fprintf(all, "%d:%s", len(f.name), f.name)
	all.Write(pkg.Hash)
	return &protobufs.PackagesAvailable{Packages: map[string]*protobufs.PackageAvailable{f.name: pkg},
		AllPackagesHash: all.Sum(nil)}, nil
}

// packageStatusesJSON shows every field of a PackageStatuses report; statuses by their
// protobuf names (PackageStatusEnum_Installed, ...).
func packageStatusesJSON(ps *protobufs.PackageStatuses) map[string]any {
	pkgs := map[string]any{}
	for name, st := range ps.Packages {
		p := map[string]any{"name": st.Name, "status": st.Status.String(),
			"agent_has_version": st.AgentHasVersion, "agent_has_hash": hex.EncodeToString(st.AgentHasHash),
			"server_offered_version": st.ServerOfferedVersion,
			"server_offered_hash":    hex.EncodeToString(st.ServerOfferedHash), "error": st.ErrorMessage}
		if d := st.DownloadDetails; d != nil {
			p["download_percent"] = d.DownloadPercent
			p["download_bytes_per_second"] = d.DownloadBytesPerSecond
		}
		pkgs[name] = p
	}
	return map[string]any{"packages": pkgs, "error": ps.ErrorMessage,
		"server_provided_all_packages_hash": hex.EncodeToString(ps.ServerProvidedAllPackagesHash)}
}

func loadOffer(path string) (*offer, error) {
	if path == "" {
		return &offer{}, nil
	}
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	files := map[string]*protobufs.AgentConfigFile{"": {Body: body, ContentType: "text/yaml"}}
	hash := sha256.Sum256(body)
	return &offer{remote: &protobufs.AgentRemoteConfig{
		Config: &protobufs.AgentConfigMap{ConfigMap: files}, ConfigHash: hash[:]}}, nil
}

func attrs(kvs []*protobufs.KeyValue) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		out[kv.Key] = kv.Value.GetStringValue()
	}
	return out
}

// report turns what an agent sent into a JSON event; only the parts present are shown.
func report(msg *protobufs.AgentToServer, transport string) map[string]any {
	f := map[string]any{
		"instance_uid": hex.EncodeToString(msg.InstanceUid),
		"sequence_num": msg.SequenceNum,
		"capabilities": msg.Capabilities,
		"transport":    transport,
	}
	if d := msg.AgentDescription; d != nil {
		f["identifying"] = attrs(d.IdentifyingAttributes)
		f["non_identifying"] = attrs(d.NonIdentifyingAttributes)
	}
	if h := msg.Health; h != nil {
		f["health"] = map[string]any{"healthy": h.Healthy, "status": h.Status, "last_error": h.LastError,
			"components": len(h.ComponentHealthMap)}
	}
	if ec := msg.EffectiveConfig; ec != nil && ec.ConfigMap != nil {
		files := map[string]string{}
		for name, file := range ec.ConfigMap.ConfigMap {
			files[name] = string(file.Body)
		}
		f["effective_config"] = files
	}
	if rcs := msg.RemoteConfigStatus; rcs != nil {
		f["remote_config_status"] = map[string]any{"status": rcs.Status.String(),
			"hash": hex.EncodeToString(rcs.LastRemoteConfigHash), "error": rcs.ErrorMessage}
	}
	if ac := msg.AvailableComponents; ac != nil {
		kinds := map[string][]string{}
		for kind, details := range ac.Components {
			for typ := range details.SubComponentMap {
				kinds[kind] = append(kinds[kind], typ)
			}
		}
		if len(kinds) > 0 {
			f["available_components"] = kinds
		} else {
			f["available_components_hash"] = hex.EncodeToString(ac.Hash)
		}
	}
	if ps := msg.PackageStatuses; ps != nil {
		f["package_statuses"] = packageStatusesJSON(ps)
	}
	if msg.AgentDisconnect != nil {
		f["disconnect"] = true
	}
	return f
}

// transportOf tells the two connection types opamp-go uses apart; it exports neither.
func transportOf(conn types.Connection) string {
	if strings.Contains(fmt.Sprintf("%T", conn), "ws") {
		return "websocket"
	}
	return "http"
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	configFile := flag.String("config-file", "", "collector config offered as remote config (optional)")
	verbose := flag.Bool("verbose", false, "also print the server's debug log")
	quiet := flag.Bool("quiet", false, "print no per-message events")
	pf := packageFlags{headers: kvFlag{}}
	flag.StringVar(&pf.url, "package-url", "", "offer a top-level package whose file is at this URL to agents that accept packages")
	flag.StringVar(&pf.sha256, "package-sha256", "", "the offered file's content_hash: its SHA-256, 64 hex digits")
	flag.StringVar(&pf.version, "package-version", "", "the offered package's version")
	flag.StringVar(&pf.name, "package-name", "", "the offered package's name (a top-level package may have an empty one)")
	flag.Var(pf.headers, "package-header", "HTTP header key=value the agent is to send with its download (repeatable)")
	flag.Parse()
	out := jsonl.New(os.Stdout)
	if err := run(out, *listen, *configFile, *verbose, *quiet, pf); err != nil {
		out.Emit("fatal", map[string]any{"error": err.Error()})
		os.Exit(1)
	}
}

// agents holds the live WebSocket connections and the uid each last spoke with, so a
// reloaded config can be pushed to all of them.
type agents struct {
	mu    sync.Mutex
	uids  map[types.Connection][]byte
	offer atomic.Pointer[offer]
	// Per agent (uid in hex): the server_provided_all_packages_hash it last reported, and
	// whether it was offered the packages since.
	pkgReported map[string][]byte
	pkgOffered  map[string]bool
}

// offerPackages says whether to offer `pkgs` to the agent that sent msg: it accepts
// packages and does not have them (by the all-packages hash it reports), and it has
// reported that since the last offer, or never been offered them. So an agent busy with
// an offer, or one that failed to install it, is not offered it again and again.
func (a *agents) offerPackages(msg *protobufs.AgentToServer, pkgs *protobufs.PackagesAvailable) bool {
	if pkgs == nil || msg.Capabilities&uint64(protobufs.AgentCapabilities_AgentCapabilities_AcceptsPackages) == 0 {
		return false
	}
	uid := hex.EncodeToString(msg.InstanceUid)
	a.mu.Lock()
	defer a.mu.Unlock()
	if msg.AgentDisconnect != nil {
		delete(a.pkgReported, uid)
		delete(a.pkgOffered, uid)
		return false
	}
	reported := msg.PackageStatuses != nil
	if reported {
		a.pkgReported[uid] = msg.PackageStatuses.ServerProvidedAllPackagesHash
	}
	if bytes.Equal(a.pkgReported[uid], pkgs.AllPackagesHash) || (a.pkgOffered[uid] && !reported) {
		return false
	}
	a.pkgOffered[uid] = true
	return true
}

func (a *agents) push(out *jsonl.Emitter) {
	off := a.offer.Load()
	a.mu.Lock()
	targets := make(map[types.Connection][]byte, len(a.uids))
	for conn, uid := range a.uids {
		targets[conn] = uid
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for conn, uid := range targets {
		wg.Add(1)
		go func(conn types.Connection, uid []byte) {
			defer wg.Done()
			_ = conn.Send(context.Background(), &protobufs.ServerToAgent{InstanceUid: uid, RemoteConfig: off.remote})
		}(conn, uid)
	}
	wg.Wait()
	out.Emit("pushed", map[string]any{"agents": len(targets)})
}

func run(out *jsonl.Emitter, listen, configFile string, verbose, quiet bool, pf packageFlags) error {
	off, err := loadOffer(configFile)
	if err != nil {
		return fmt.Errorf("--config-file: %w", err)
	}
	pkgs, err := packageOffer(pf)
	if err != nil {
		return err
	}
	live := &agents{uids: map[types.Connection][]byte{}, pkgReported: map[string][]byte{},
		pkgOffered: map[string]bool{}}
	live.offer.Store(off)
	// The port is taken here so the test learns it before any agent connects.
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	srv := server.New(&jsonl.Logger{Out: out, Verbose: verbose})
	callbacks := types.ConnectionCallbacks{
		OnConnected: func(_ context.Context, conn types.Connection) {
			if !quiet {
				out.Emit("connected", map[string]any{"transport": transportOf(conn),
					"remote": conn.Connection().RemoteAddr().String()})
			}
		},
		OnMessage: func(_ context.Context, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
			if !quiet {
				out.Emit("agent_message", report(msg, transportOf(conn)))
			}
			if transportOf(conn) == "websocket" {
				live.mu.Lock()
				live.uids[conn] = msg.InstanceUid
				live.mu.Unlock()
			}
			off := live.offer.Load()
			resp := &protobufs.ServerToAgent{InstanceUid: msg.InstanceUid,
				Capabilities: uint64(protobufs.ServerCapabilities_ServerCapabilities_AcceptsStatus |
					protobufs.ServerCapabilities_ServerCapabilities_OffersRemoteConfig |
					protobufs.ServerCapabilities_ServerCapabilities_AcceptsEffectiveConfig)}
			accepts := msg.Capabilities&uint64(protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig) != 0
			have := msg.GetRemoteConfigStatus().GetLastRemoteConfigHash()
			if off.remote != nil && accepts && hex.EncodeToString(have) != hex.EncodeToString(off.remote.ConfigHash) {
				resp.RemoteConfig = off.remote
			}
			if pkgs != nil {
				resp.Capabilities |= uint64(protobufs.ServerCapabilities_ServerCapabilities_OffersPackages)
				if live.offerPackages(msg, pkgs) {
					resp.PackagesAvailable = pkgs
					if !quiet {
						out.Emit("packages_offered", map[string]any{"instance_uid": hex.EncodeToString(msg.InstanceUid),
							"all_packages_hash": hex.EncodeToString(pkgs.AllPackagesHash)})
					}
				}
			}
			// Agents first send only the hash of their components; ask for the full list.
			if ac := msg.AvailableComponents; ac != nil && len(ac.Components) == 0 {
				resp.Flags |= uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportAvailableComponents)
			}
			return resp
		},
		OnConnectionClose: func(conn types.Connection) {
			live.mu.Lock()
			delete(live.uids, conn)
			live.mu.Unlock()
			if !quiet {
				out.Emit("disconnected", map[string]any{"transport": transportOf(conn)})
			}
		},
	}
	err = srv.Start(server.StartSettings{
		ListenEndpoint: addr,
		ListenPath:     "/v1/opamp",
		Settings: server.Settings{Callbacks: types.Callbacks{
			OnConnecting: func(*http.Request) types.ConnectionResponse {
				return types.ConnectionResponse{Accept: true, ConnectionCallbacks: callbacks}
			},
		}},
	})
	if err != nil {
		return err
	}
	listening := map[string]any{"addr": addr,
		"ws_url": "ws://" + addr + "/v1/opamp", "http_url": "http://" + addr + "/v1/opamp"}
	if pkgs != nil {
		pkg := pkgs.Packages[pf.name]
		listening["package"] = map[string]any{"name": pf.name, "version": pkg.Version,
			"hash": hex.EncodeToString(pkg.Hash), "all_packages_hash": hex.EncodeToString(pkgs.AllPackagesHash),
			"content_hash": hex.EncodeToString(pkg.File.ContentHash), "url": pkg.File.DownloadUrl}
	}
	out.Emit("listening", listening)

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	for {
		select {
		case <-ctx.Done():
			return srv.Stop(context.Background())
		case <-hup:
			reloaded, err := loadOffer(configFile)
			if err != nil {
				out.Emit("error", map[string]any{"op": "reload", "error": err.Error()})
				continue
			}
			live.offer.Store(reloaded)
			live.push(out)
		}
	}
}
