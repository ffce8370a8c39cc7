// Command kind-config-check loads each kind cluster config given as an argument the way
// `kind create cluster --config FILE` does without --name, --image or KIND_CLUSTER_NAME
// (pkg/cluster/internal/create: encoding.Load, then config.SetDefaultsCluster, then
// Validate) and prints, per file, one line of JSON summarising the config kind would
// create from. A file kind refuses is reported as `<path>: <error>` on stderr and the
// exit status is 1.
//
// kind's loader is in sigs.k8s.io/kind/pkg/internal, so scripts/test-deps builds this
// file as pkg/cmd/kind-config-check inside a copy of that module, where Go lets it
// import those packages.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/internal/apis/config"
	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

type portMapping struct {
	ContainerPort int32  `json:"containerPort"`
	HostPort      int32  `json:"hostPort"`
	ListenAddress string `json:"listenAddress"`
	Protocol      string `json:"protocol"`
}

type node struct {
	Role              string        `json:"role"`
	Image             string        `json:"image"`
	ExtraPortMappings []portMapping `json:"extraPortMappings"`
}

type networking struct {
	IPFamily         string `json:"ipFamily"`
	APIServerAddress string `json:"apiServerAddress"`
	APIServerPort    int32  `json:"apiServerPort"`
	PodSubnet        string `json:"podSubnet"`
	ServiceSubnet    string `json:"serviceSubnet"`
	KubeProxyMode    string `json:"kubeProxyMode"`
}

type summary struct {
	Path       string     `json:"path"`
	Name       string     `json:"name"`
	Nodes      []node     `json:"nodes"`
	Networking networking `json:"networking"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kind-config-check FILE...")
		os.Exit(2)
	}
	status := 0
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			status = 1
		}
	}
	os.Exit(status)
}

func check(path string) error {
	cfg, err := encoding.Load(path)
	if err != nil {
		return err
	}
	// create's fixupOptions defaults what the file left unset (the name "kind") before
	// Validate runs.
	config.SetDefaultsCluster(cfg)
	if err := cfg.Validate(); err != nil {
		return err
	}
	out, err := json.Marshal(summarise(path, cfg))
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func summarise(path string, cfg *config.Cluster) summary {
	s := summary{
		Path:  path,
		Name:  cfg.Name,
		Nodes: []node{},
		Networking: networking{
			IPFamily:         string(cfg.Networking.IPFamily),
			APIServerAddress: cfg.Networking.APIServerAddress,
			APIServerPort:    cfg.Networking.APIServerPort,
			PodSubnet:        cfg.Networking.PodSubnet,
			ServiceSubnet:    cfg.Networking.ServiceSubnet,
			KubeProxyMode:    string(cfg.Networking.KubeProxyMode),
		},
	}
	for _, n := range cfg.Nodes {
		mappings := []portMapping{}
		for _, m := range n.ExtraPortMappings {
			mappings = append(mappings, portMapping{
				ContainerPort: m.ContainerPort,
				HostPort:      m.HostPort,
				ListenAddress: m.ListenAddress,
				Protocol:      string(m.Protocol),
			})
		}
		s.Nodes = append(s.Nodes, node{Role: string(n.Role), Image: n.Image, ExtraPortMappings: mappings})
	}
	return s
}
