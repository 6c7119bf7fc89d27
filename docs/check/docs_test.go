// Package check tests the deployment recipes docs/envoy.yaml and
// docs/istio.yaml. No Envoy or Istio binary can run where the project is
// built and tested, so instead of starting one, the tests read the recipes
// into Envoy's own generated API types (go-control-plane, with their
// protoc-gen-validate rules) and Istio's (istio.io/api), failing on any
// unknown field, unresolvable typed_config or broken rule, and then check
// the points Keygate depends on: ext_authz over gRPC (API v3) before the
// router, an HTTP/2 cluster for Keygate, and the per-route settings.
// TestChecksCatchMistakes breaks copies of the recipes to show the checks
// can fail.
package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1 "istio.io/api/security/v1"
	"sigs.k8s.io/yaml"
)

const (
	// The name Envoy knows the ext_authz filter by; typed_per_filter_config
	// keys must match it. Istio names the filter of a CUSTOM action so too.
	extAuthzFilter = "envoy.filters.http.ext_authz"
	// The key of Cluster.typed_extension_protocol_options for HTTP options.
	httpProtocolOptions = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// Keygate's gRPC port, which also serves ext_authz Check.
	keygatePort = 50051
)

// Unknown fields are errors (DiscardUnknown is false); Anys resolve through
// the global registry, filled by the imports above.
var strict = protojson.UnmarshalOptions{DiscardUnknown: false}

func TestEnvoyRecipe(t *testing.T) {
	for _, problem := range checkEnvoy(readDoc(t, "envoy.yaml")) {
		t.Error("docs/envoy.yaml: " + problem)
	}
}

func TestIstioRecipe(t *testing.T) {
	for _, problem := range checkIstio(readDoc(t, "istio.yaml")) {
		t.Error("docs/istio.yaml: " + problem)
	}
}

// TestChecksCatchMistakes breaks a copy of a recipe in one place and expects
// a problem naming it.
func TestChecksCatchMistakes(t *testing.T) {
	cases := []struct {
		name, file, old, new, want string
	}{
		{"ext_authz names a missing cluster", "envoy.yaml",
			"cluster_name: keygate }", "cluster_name: keygat }", `cluster "keygat", which does not exist`},
		{"misspelled field", "envoy.yaml",
			"transport_api_version: V3", "transport_api_verison: V3", `unknown field "transport_api_verison"`},
		{"rule broken inside a typed_config", "envoy.yaml",
			"stat_prefix: ingress", `stat_prefix: ""`, "HttpConnectionManager.StatPrefix"},
		{"Keygate's cluster without HTTP/2", "envoy.yaml",
			"http2_protocol_options: {}", "http_protocol_options: {}", "http2_protocol_options"},
		{"per-route setting under another filter name", "envoy.yaml",
			"envoy.filters.http.ext_authz:\n                              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n                              disabled",
			"ext_authz:\n                              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n                              disabled",
			`"/healthz" must disable ext_authz`},
		{"policy names an unknown provider", "istio.yaml",
			"    name: keygate\n  rules:", "    name: keygate-authz\n  rules:", `provider "keygate-authz"`},
		{"misspelled mesh config field", "istio.yaml",
			"failOpen: false", "failOpn: false", `unknown field "failOpn"`},
		{"provider on another port", "istio.yaml",
			"port: 50051", "port: 8080", "port 50051"},
		{"bad Any in the EnvoyFilter patch", "istio.yaml",
			"ext_authz.v3.ExtAuthzPerRoute\n              check_settings:", "ext_authz.v3.ExtAuthzPerRoute\n              check_setting:", `unknown field "check_setting"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := readDoc(t, c.file)
			if n := bytes.Count(text, []byte(c.old)); n != 1 {
				t.Fatalf("docs/%s has %q %d times, want once: update this case", c.file, c.old, n)
			}
			broken := bytes.Replace(text, []byte(c.old), []byte(c.new), 1)
			check := checkEnvoy
			if c.file == "istio.yaml" {
				check = checkIstio
			}
			problems := check(broken)
			for _, p := range problems {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Errorf("no problem mentions %q; got %q", c.want, problems)
		})
	}
}

func readDoc(t *testing.T, name string) []byte {
	t.Helper()
	text, err := os.ReadFile("../" + name)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

type problems []string

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

// checkEnvoy returns what is wrong with an Envoy bootstrap for Keygate.
func checkEnvoy(text []byte) (p problems) {
	js, err := yaml.YAMLToJSONStrict(text)
	if err != nil {
		p.add("not YAML: %v", err)
		return p
	}
	var boot bootstrapv3.Bootstrap
	if err := strict.Unmarshal(js, &boot); err != nil {
		p.add("not an Envoy v3 Bootstrap: %v", err)
		return p
	}
	if err := boot.ValidateAll(); err != nil {
		p.add("Bootstrap breaks Envoy's rules: %v", err)
	}
	validateAnys(boot.ProtoReflect(), "bootstrap", &p)

	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range boot.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	found := false
	for _, l := range boot.GetStaticResources().GetListeners() {
		for _, chain := range l.GetFilterChains() {
			for _, f := range chain.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&hcm) && f.GetTypedConfig().UnmarshalTo(&hcm) == nil {
					found = true
					checkConnectionManager(&hcm, clusters, &p)
				}
			}
		}
	}
	if !found {
		p.add("no listener has an HttpConnectionManager")
	}
	return p
}

func checkConnectionManager(hcm *hcmv3.HttpConnectionManager, clusters map[string]*clusterv3.Cluster, p *problems) {
	authzAt, routerAt := -1, -1
	var authz *extauthzv3.ExtAuthz
	authzName := ""
	for i, f := range hcm.GetHttpFilters() {
		cfg, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			continue // reported by validateAnys
		}
		switch cfg := cfg.(type) {
		case *extauthzv3.ExtAuthz:
			authzAt, authz, authzName = i, cfg, f.GetName()
		case *routerv3.Router:
			routerAt = i
		}
	}
	switch {
	case authz == nil:
		p.add("no ext_authz filter in http_filters")
		return
	case routerAt != len(hcm.GetHttpFilters())-1:
		p.add("the router must be the last of http_filters")
	case authzAt > routerAt:
		p.add("the ext_authz filter must come before the router")
	}
	if authzName != extAuthzFilter {
		p.add("the ext_authz filter is named %q, want %q", authzName, extAuthzFilter)
	}
	if v := authz.GetTransportApiVersion(); v != corev3.ApiVersion_V3 {
		p.add("ext_authz transport_api_version is %v, want V3", v)
	}
	if grpc := authz.GetGrpcService().GetEnvoyGrpc(); grpc == nil {
		p.add("ext_authz must call Keygate through grpc_service.envoy_grpc")
	} else if c := clusters[grpc.GetClusterName()]; c == nil {
		p.add("ext_authz grpc_service.envoy_grpc names cluster %q, which does not exist", grpc.GetClusterName())
	} else if !explicitHTTP2(c) {
		p.add("cluster %q (Keygate, gRPC) needs typed_extension_protocol_options[%s].explicit_http_config.http2_protocol_options",
			c.GetName(), httpProtocolOptions)
	}

	if hcm.GetRouteConfig() == nil {
		p.add("the HttpConnectionManager needs an inline route_config")
		return
	}
	var zones, healthz *routev3.Route
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			where := fmt.Sprintf("route %q of virtual host %q", r.GetMatch().GetPrefix(), vh.GetName())
			if c := r.GetRoute().GetCluster(); clusters[c] == nil {
				p.add("%s goes to cluster %q, which does not exist", where, c)
			}
			for key, cfg := range r.GetTypedPerFilterConfig() {
				if cfg.MessageIs(&extauthzv3.ExtAuthzPerRoute{}) && key != authzName {
					p.add("%s sets ExtAuthzPerRoute under %q, not the ext_authz filter's name %q: Envoy would ignore it", where, key, authzName)
				}
			}
			switch r.GetMatch().GetPrefix() {
			case "/zones":
				zones = r
			case "/healthz":
				healthz = r
			}
		}
	}
	if zones == nil {
		p.add(`no route with prefix "/zones"`)
	} else if perRoute(zones, authzName).GetCheckSettings().GetContextExtensions()["keygate_scopes"] == "" {
		p.add(`route "/zones" must set typed_per_filter_config[%q].check_settings.context_extensions.keygate_scopes`, authzName)
	}
	if healthz == nil {
		p.add(`no route with prefix "/healthz"`)
	} else if !perRoute(healthz, authzName).GetDisabled() {
		p.add(`route "/healthz" must disable ext_authz (typed_per_filter_config[%q].disabled)`, authzName)
	}
}

// perRoute returns the route's ExtAuthzPerRoute under the filter's name, or nil.
func perRoute(r *routev3.Route, filter string) *extauthzv3.ExtAuthzPerRoute {
	var cfg extauthzv3.ExtAuthzPerRoute
	if r.GetTypedPerFilterConfig()[filter].UnmarshalTo(&cfg) != nil {
		return nil
	}
	return &cfg
}

func explicitHTTP2(c *clusterv3.Cluster) bool {
	var opts upstreamhttpv3.HttpProtocolOptions
	if c.GetTypedExtensionProtocolOptions()[httpProtocolOptions].UnmarshalTo(&opts) != nil {
		return false
	}
	return opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

// validateAnys unpacks every Any inside m (typed_config,
// typed_per_filter_config, typed_extension_protocol_options, ...), at any
// depth, and checks it against Envoy's rules: go-control-plane's ValidateAll
// stops at an Any.
func validateAnys(m protoreflect.Message, path string, p *problems) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			p.add("%s: cannot unpack %s: %v", path, a.GetTypeUrl(), err)
			return
		}
		if v, ok := inner.(interface{ ValidateAll() error }); !ok {
			p.add("%s: %s has no validation rules", path, a.GetTypeUrl())
		} else if err := v.ValidateAll(); err != nil {
			p.add("%s breaks Envoy's rules: %v", path, err)
		}
		m = inner.ProtoReflect()
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		at := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					validateAnys(mv.Message(), fmt.Sprintf("%s[%q]", at, k.String()), p)
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len(); i++ {
					validateAnys(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", at, i), p)
				}
			}
		case fd.Message() != nil:
			validateAnys(v.Message(), at, p)
		}
		return true
	})
}

// object is a Kubernetes-style document; other top-level keys are errors.
type object struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   map[string]any  `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

// The fields of IstioOperator's spec (istio.io/istio, operator/pkg/apis),
// whose types are not in istio.io/api: only meshConfig is read further.
var istioOperatorSpec = []string{"profile", "hub", "tag", "namespace", "revision",
	"compatibilityVersion", "meshConfig", "components", "values", "unvalidatedValues"}

// checkIstio returns what is wrong with the Istio recipe for Keygate.
func checkIstio(text []byte) (p problems) {
	byKind := map[string]object{}
	dec := yamlv3.NewDecoder(bytes.NewReader(text))
	for i := 0; ; i++ {
		var node yamlv3.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			p.add("document %d: not YAML: %v", i, err)
			return p
		}
		var obj object
		if err := decodeStrict(&node, &obj); err != nil {
			p.add("document %d: %v", i, err)
			continue
		}
		if _, dup := byKind[obj.Kind]; dup {
			p.add("more than one %s", obj.Kind)
		}
		byKind[obj.Kind] = obj
	}
	for kind, apiVersions := range map[string][]string{
		"IstioOperator":       {"install.istio.io/v1alpha1"},
		"AuthorizationPolicy": {"security.istio.io/v1", "security.istio.io/v1beta1"},
		"EnvoyFilter":         {"networking.istio.io/v1alpha3"},
	} {
		if obj, ok := byKind[kind]; !ok {
			p.add("no %s", kind)
		} else if !slices.Contains(apiVersions, obj.APIVersion) {
			p.add("%s has apiVersion %q, want one of %q", kind, obj.APIVersion, apiVersions)
		}
	}
	if len(p) > 0 {
		return p
	}

	// IstioOperator: meshConfig is a MeshConfig.
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(byKind["IstioOperator"].Spec, &spec); err != nil {
		p.add("IstioOperator spec: %v", err)
		return p
	}
	for key := range spec {
		if !slices.Contains(istioOperatorSpec, key) {
			p.add("IstioOperator spec has unknown field %q", key)
		}
	}
	var mesh meshv1alpha1.MeshConfig
	if err := strict.Unmarshal(spec["meshConfig"], &mesh); err != nil {
		p.add("IstioOperator spec.meshConfig is not a MeshConfig: %v", err)
	}
	grpcProviders := map[string]*meshv1alpha1.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider{}
	for _, ep := range mesh.GetExtensionProviders() {
		if g := ep.GetEnvoyExtAuthzGrpc(); g != nil {
			grpcProviders[ep.GetName()] = g
		}
	}

	var policy securityv1.AuthorizationPolicy
	if err := strict.Unmarshal(byKind["AuthorizationPolicy"].Spec, &policy); err != nil {
		p.add("AuthorizationPolicy spec: %v", err)
	}
	if policy.GetAction() != securityv1.AuthorizationPolicy_CUSTOM {
		p.add("AuthorizationPolicy action is %v, want CUSTOM", policy.GetAction())
	}
	name := policy.GetProvider().GetName()
	if g := grpcProviders[name]; g == nil {
		p.add("AuthorizationPolicy names provider %q, but meshConfig.extensionProviders has no envoyExtAuthzGrpc provider by that name", name)
	} else if g.GetPort() != keygatePort {
		p.add("extension provider %q uses port %d, want Keygate's port %d", name, g.GetPort(), keygatePort)
	}

	var filter networkingv1alpha3.EnvoyFilter
	if err := strict.Unmarshal(byKind["EnvoyFilter"].Spec, &filter); err != nil {
		p.add("EnvoyFilter spec: %v", err)
	}
	patched := false
	for i, patch := range filter.GetConfigPatches() {
		if patch.GetApplyTo() != networkingv1alpha3.EnvoyFilter_HTTP_ROUTE {
			continue
		}
		at := fmt.Sprintf("EnvoyFilter configPatches[%d].patch.value", i)
		var route routev3.Route
		if err := structTo(patch.GetPatch().GetValue(), &route); err != nil {
			p.add("%s is not part of an Envoy v3 Route: %v", at, err)
			continue
		}
		validateAnys(route.ProtoReflect(), at, &p)
		if perRoute(&route, extAuthzFilter).GetCheckSettings().GetContextExtensions()["keygate_scopes"] != "" {
			patched = true
		}
	}
	if !patched {
		p.add("EnvoyFilter has no HTTP_ROUTE patch setting typed_per_filter_config[%q] with check_settings.context_extensions.keygate_scopes", extAuthzFilter)
	}
	return p
}

// decodeStrict reads a YAML document into v through JSON, rejecting unknown fields.
func decodeStrict(node *yamlv3.Node, v any) error {
	text, err := yamlv3.Marshal(node)
	if err != nil {
		return err
	}
	js, err := yaml.YAMLToJSONStrict(text)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// structTo reads a google.protobuf.Struct (an EnvoyFilter patch value) into m, strictly.
func structTo(s proto.Message, m proto.Message) error {
	js, err := protojson.Marshal(s)
	if err != nil {
		return err
	}
	return strict.Unmarshal(js, m)
}
