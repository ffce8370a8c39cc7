// Command opamp-go-server is opamp-go's reference OpAMP server wrapped for tests: it
// serves WebSocket and plain HTTP on one path, offers a config file to every agent that
// accepts remote config, and prints what agents report as JSON lines.
//
// It is the independent peer the test world needs before (and beside) our own server:
// the proof tests connect real agents to it, and benchmarks can measure our server
// against it in the same run. SIGHUP re-reads the config file and pushes it to every
// WebSocket agent at once; --quiet drops the per-message events so a benchmark measures
// the server, not its printing.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
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
	flag.Parse()
	out := jsonl.New(os.Stdout)
	if err := run(out, *listen, *configFile, *verbose, *quiet); err != nil {
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

func run(out *jsonl.Emitter, listen, configFile string, verbose, quiet bool) error {
	off, err := loadOffer(configFile)
	if err != nil {
		return fmt.Errorf("--config-file: %w", err)
	}
	live := &agents{uids: map[types.Connection][]byte{}}
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
	out.Emit("listening", map[string]any{"addr": addr,
		"ws_url": "ws://" + addr + "/v1/opamp", "http_url": "http://" + addr + "/v1/opamp"})

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
