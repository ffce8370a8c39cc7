// Command argocd-health runs an Argo CD health script as Argo CD does: `argocd-health
// SCRIPT.lua` reads one Kubernetes object as JSON on stdin and prints {"status": "...",
// "message": "..."}; a script that fails, times out or returns no table exits 1 (stderr).
//
// What it reproduces of Argo CD (util/lua/lua.go, runLua and ExecuteHealthLua, and
// util/lua/oslib_safe.go in github.com/argoproj/argo-cd), written anew here:
//   - gopher-lua (Lua 5.1), standard libraries skipped as for an argocd-cm health script
//     without useOpenLibs: only package, base, table and a "safe" os (also preloaded for
//     require("os")) are opened; no string, math, io, coroutine or debug.
//   - a one-second timeout on the run, through the state's context.
//   - the object as the global `obj`: objects become hash tables, arrays are appended in
//     order (nil elements are dropped by Append), every number (unstructured's int64 or
//     float64) becomes a Lua number, null is nil.
//   - the verdict is the value on top of the stack after the chunk ran: a table, whose
//     status and message are read; a status Argo CD does not know becomes Unknown,
//     "Lua returned an invalid health status".
//
// Not reproduced: os.date and os.time(table) (Argo CD's safe os has them; here os.time()
// alone), the json module Argo CD preloads for require("json"), and gopher-json's
// encoding of the whole returned table (only status and message are read from it).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

var (
	known  = map[string]bool{"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true}
	safeOs = map[string]lua.LGFunction{"time": osTime}
)

func main() {
	if len(os.Args) != 2 {
		fail("usage: argocd-health SCRIPT.lua < object.json")
	}
	script, err := os.ReadFile(os.Args[1])
	dec, obj := json.NewDecoder(os.Stdin), map[string]any{}
	dec.UseNumber()
	if err == nil {
		err = dec.Decode(&obj)
	}
	if err != nil {
		fail("reading the script or the object on stdin: %v", err)
	}
	hs, err := run(obj, string(script))
	if err != nil {
		fail("%v", err)
	}
	_ = json.NewEncoder(os.Stdout).Encode(hs)
}

func run(obj map[string]any, script string) (*health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	openSafeOs := func(l *lua.LState) int { l.Push(l.RegisterModule(lua.OsLibName, safeOs)); return 1 }
	libs := []lua.LGFunction{lua.OpenPackage, lua.OpenBase, lua.OpenTable, openSafeOs}
	for i, name := range []string{lua.LoadLibName, lua.BaseLibName, lua.TabLibName, lua.OsLibName} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(libs[i]), Protect: true}, lua.LString(name)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int { l.Push(l.SetFuncs(l.NewTable(), safeOs)); return 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	status, err := field(ret, "status")
	if err != nil {
		return nil, err
	}
	message, err := field(ret, "message")
	if err != nil {
		return nil, err
	}
	if !known[status] {
		return &health{"Unknown", "Lua returned an invalid health status"}, nil
	}
	return &health{status, message}, nil
}

func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// field is what Argo CD's JSON round trip of the returned table (layeh.com/gopher-json,
// then encoding/json into gitops-engine's HealthStatus) makes of status and message: a
// string, "" when absent, an error for anything else.
func field(t *lua.LTable, k string) (string, error) {
	switch v := t.RawGetString(k).(type) {
	case lua.LString:
		return string(v), nil
	case *lua.LNilType:
		return "", nil
	default:
		return "", fmt.Errorf("json: cannot unmarshal %s into the health status's %s", v.Type(), k)
	}
}

func osTime(l *lua.LState) int {
	if l.GetTop() > 0 {
		l.RaiseError("argocd-health reproduces only os.time() without arguments")
	}
	l.Push(lua.LNumber(time.Now().Unix()))
	return 1
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-health: "+format+"\n", args...)
	os.Exit(1)
}
