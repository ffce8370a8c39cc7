package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

// maxPackageBytes bounds a downloaded package file: the store holds it in memory.
const maxPackageBytes = 256 << 20

// packageStore is the agent's PackagesStateProvider, in memory. opamp-go's syncer does
// the protocol (which packages to fetch, the HTTP GET with the offered headers, the
// statuses it reports); it does not check DownloadableFile.content_hash, it only hands
// it to UpdateContent, so this store checks the SHA-256 of what was downloaded and
// refuses a mismatch (opamp-go then reports InstallFailed with the error). Storing the
// new state of a top-level package is its installation: install makes the agent run it.
type packageStore struct {
	mu         sync.Mutex
	allHash    []byte
	states     map[string]types.PackageState
	contents   map[string][]byte
	fileHashes map[string][]byte
	statuses   *protobufs.PackageStatuses
	install    func(name string, state types.PackageState)
}

var _ types.PackagesStateProvider = (*packageStore)(nil)

func newPackageStore(install func(string, types.PackageState)) *packageStore {
	return &packageStore{states: map[string]types.PackageState{}, contents: map[string][]byte{},
		fileHashes: map[string][]byte{}, install: install}
}

func (s *packageStore) AllPackagesHash() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allHash, nil
}

func (s *packageStore) SetAllPackagesHash(hash []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.allHash = hash
	return nil
}

func (s *packageStore) Packages() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.states))
	for name := range s.states {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

func (s *packageStore) PackageState(name string) (types.PackageState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.states[name], nil // the zero value says Exists: false
}

// SetPackageState is called by opamp-go once the file is in place: the package is
// installed at state.Version.
func (s *packageStore) SetPackageState(name string, state types.PackageState) error {
	s.mu.Lock()
	s.states[name] = state
	s.mu.Unlock()
	s.install(name, state)
	return nil
}

func (s *packageStore) CreatePackage(name string, typ protobufs.PackageType) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.states[name].Exists {
		return fmt.Errorf("package %q already exists", name)
	}
	s.states[name] = types.PackageState{Exists: true, Type: typ}
	return nil
}

func (s *packageStore) FileContentHash(name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fileHashes[name], nil
}

// UpdateContent reads the download to the end and keeps it only if its SHA-256 is the
// offered content_hash.
func (s *packageStore) UpdateContent(ctx context.Context, name string, data io.Reader, contentHash, _ []byte) error {
	h := sha256.New()
	var buf bytes.Buffer
	n, err := io.Copy(io.MultiWriter(h, &buf), io.LimitReader(data, maxPackageBytes+1))
	if err != nil {
		return fmt.Errorf("reading the package file: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if n > maxPackageBytes {
		return fmt.Errorf("package file larger than %d bytes", maxPackageBytes)
	}
	got := h.Sum(nil)
	if !bytes.Equal(got, contentHash) {
		return fmt.Errorf("content hash mismatch: the %d bytes downloaded have sha256 %s, the offer's content_hash is %s",
			n, hex.EncodeToString(got), hex.EncodeToString(contentHash))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.contents[name] = buf.Bytes()
	s.fileHashes[name] = got
	return nil
}

func (s *packageStore) DeletePackage(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.states, name)
	delete(s.contents, name)
	delete(s.fileHashes, name)
	return nil
}

func (s *packageStore) LastReportedStatuses() (*protobufs.PackageStatuses, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statuses, nil
}

func (s *packageStore) SetLastReportedStatuses(statuses *protobufs.PackageStatuses) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statuses = statuses
	return nil
}

// packagesAvailableJSON describes an offer for the "packages_available" event.
func packagesAvailableJSON(p *protobufs.PackagesAvailable) map[string]any {
	pkgs := map[string]any{}
	for name, pkg := range p.Packages {
		f := map[string]any{"type": pkg.Type.String(), "version": pkg.Version, "hash": hex.EncodeToString(pkg.Hash)}
		if file := pkg.File; file != nil {
			f["url"] = file.DownloadUrl
			f["content_hash"] = hex.EncodeToString(file.ContentHash)
			f["headers"] = len(file.GetHeaders().GetHeaders())
		}
		pkgs[name] = f
	}
	return map[string]any{"packages": pkgs, "all_packages_hash": hex.EncodeToString(p.AllPackagesHash)}
}

// install makes the agent run a top-level package: its description's service.version
// becomes the package version and is sent, as if it had restarted on the new binary
// (the instance uid stays). Addons are only recorded.
func (a *agent) install(name string, state types.PackageState) {
	a.out.Emit("package_installed", map[string]any{"name": name, "version": state.Version,
		"type": state.Type.String(), "hash": hex.EncodeToString(state.Hash)})
	if state.Type != protobufs.PackageType_PackageType_TopLevel {
		return
	}
	a.mu.Lock()
	d := withIdentifying(a.description, "service.version", state.Version)
	a.description = d
	a.mu.Unlock()
	if err := a.current().SetAgentDescription(d); err != nil {
		a.out.Emit("error", map[string]any{"op": "SetAgentDescription", "error": err.Error()})
	}
}

// withIdentifying is a copy of d with the identifying attribute key set to value.
func withIdentifying(d *protobufs.AgentDescription, key, value string) *protobufs.AgentDescription {
	attrs := map[string]string{}
	for _, kv := range d.GetIdentifyingAttributes() {
		attrs[kv.Key] = kv.Value.GetStringValue()
	}
	attrs[key] = value
	return &protobufs.AgentDescription{IdentifyingAttributes: keyValues(attrs),
		NonIdentifyingAttributes: d.GetNonIdentifyingAttributes()}
}

// syncPackages lets opamp-go process an offer (download, statuses) and, once it is done,
// prints each package it could not install.
func (a *agent) syncPackages(offer *protobufs.PackagesAvailable, syncer types.PackagesSyncer) {
	// The client's run context, not the message's: a download outlives the callback.
	if err := syncer.Sync(a.ctx); err != nil {
		a.out.Emit("error", map[string]any{"op": "PackagesSyncer.Sync", "error": err.Error()})
		return
	}
	go func() {
		select {
		case <-syncer.Done():
		case <-a.ctx.Done():
			return
		}
		all, _ := a.packages.AllPackagesHash()
		if bytes.Equal(all, offer.AllPackagesHash) {
			return // every package is installed: opamp-go records the hash only then
		}
		statuses, _ := a.packages.LastReportedStatuses()
		failed := 0
		for name, st := range statuses.GetPackages() {
			if _, offered := offer.Packages[name]; !offered ||
				st.Status != protobufs.PackageStatusEnum_PackageStatusEnum_InstallFailed {
				continue
			}
			failed++
			a.out.Emit("package_install_failed", map[string]any{"name": name,
				"version": st.ServerOfferedVersion, "hash": hex.EncodeToString(st.ServerOfferedHash),
				"error": st.ErrorMessage})
		}
		if failed == 0 {
			a.out.Emit("error", map[string]any{"op": "package sync",
				"error": "not every package was synced, yet none failed to install (see the client's log)"})
		}
	}()
}
