package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// kindKubeProxyConfiguration is the kind a --config file must declare.
const kindKubeProxyConfiguration = "KubeProxyConfiguration"

// LoadFile reads path and decodes it strictly as a KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1, YAML or JSON). Unknown and duplicate fields
// are errors naming the field, so typos do not pass as defaults.
func LoadFile(path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	cfg, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// Decode decodes data strictly as a KubeProxyConfiguration; see LoadFile.
func Decode(data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, fmt.Errorf("not a KubeProxyConfiguration object: %w", err)
	}
	want := v1alpha1.SchemeGroupVersion.String()
	if tm.APIVersion != want || tm.Kind != kindKubeProxyConfiguration {
		err := fmt.Errorf("apiVersion %q, kind %q: want apiVersion %s, kind %s",
			tm.APIVersion, tm.Kind, want, kindKubeProxyConfiguration)
		if tm.Kind == "ConfigMap" {
			err = fmt.Errorf("%w (pass the ConfigMap's config.conf key, not the ConfigMap)", err)
		}
		return nil, err
	}
	cfg := &v1alpha1.KubeProxyConfiguration{}
	strict, err := sigsjson.UnmarshalStrict(js, cfg)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%w (check the field names against kubeproxy.config.k8s.io/v1alpha1)", errors.Join(strict...))
	}
	return cfg, nil
}

// fieldKind says what kipvs does with a KubeProxyConfiguration field.
type fieldKind int

const (
	// applied fields are mapped onto Options.
	applied fieldKind = iota
	// kept fields are stored in Options but not applied yet (none at present).
	kept
	// unsupported fields are ignored with a warning unless they hold kube-proxy's default.
	unsupported
)

// fieldRule classifies one field of KubeProxyConfiguration, by its JSON path.
type fieldRule struct {
	kind fieldKind
	// harmless are renderings of values that change nothing for kipvs (kube-proxy's
	// defaults, or settings kube-proxy's IPVS mode ignores as well); the zero value
	// is always harmless.
	harmless []string
	// why completes the warning for unsupported fields.
	why string
}

// fileFields classifies every leaf field of KubeProxyConfiguration. A test walks
// the struct and fails when kube-proxy adds a field that is not listed here;
// at run time an unlisted field that is set is warned about like an unsupported one.
var fileFields = map[string]fieldRule{
	"featureGates":                        {kind: unsupported, why: "kipvs has no kube-proxy feature gates"},
	"clientConnection.kubeconfig":         {kind: applied},
	"clientConnection.acceptContentTypes": {kind: applied},
	"clientConnection.contentType":        {kind: applied},
	"clientConnection.qps":                {kind: applied},
	"clientConnection.burst":              {kind: applied},
	"logging":                             {kind: applied},
	"hostnameOverride":                    {kind: applied},
	"bindAddress":                         {kind: unsupported, harmless: []string{"0.0.0.0", "::"}, why: "kipvs takes the node's primary IPs from the Node object"},
	"healthzBindAddress":                  {kind: applied},
	"metricsBindAddress":                  {kind: applied},
	"bindAddressHardFail":                 {kind: unsupported},
	"enableProfiling":                     {kind: unsupported},
	"showHiddenMetricsForVersion":         {kind: unsupported},
	"mode":                                {kind: applied},
	"iptables.masqueradeBit":              {kind: unsupported, harmless: []string{"14"}},
	"iptables.masqueradeAll":              {kind: applied},
	"iptables.localhostNodePorts":         {kind: unsupported, harmless: []string{"true", "false"}, why: "only iptables mode serves NodePorts on localhost"},
	"iptables.syncPeriod":                 {kind: unsupported, harmless: []string{"30s"}, why: "kipvs uses ipvs.syncPeriod"},
	"iptables.minSyncPeriod":              {kind: unsupported, harmless: []string{"1s"}, why: "kipvs uses ipvs.minSyncPeriod"},
	"ipvs.syncPeriod":                     {kind: applied},
	"ipvs.minSyncPeriod":                  {kind: applied},
	"ipvs.scheduler":                      {kind: applied},
	"ipvs.excludeCIDRs":                   {kind: applied},
	"ipvs.strictARP":                      {kind: applied},
	"ipvs.tcpTimeout":                     {kind: applied},
	"ipvs.tcpFinTimeout":                  {kind: applied},
	"ipvs.udpTimeout":                     {kind: applied},
	"nftables.masqueradeBit":              {kind: unsupported, harmless: []string{"14"}, why: "nftables mode only"},
	"nftables.masqueradeAll":              {kind: unsupported, why: "nftables mode only; use iptables.masqueradeAll"},
	"nftables.syncPeriod":                 {kind: unsupported, harmless: []string{"30s"}, why: "nftables mode only"},
	"nftables.minSyncPeriod":              {kind: unsupported, harmless: []string{"1s"}, why: "nftables mode only"},
	"winkernel.networkName":               {kind: unsupported, why: "Windows only"},
	"winkernel.sourceVip":                 {kind: unsupported, why: "Windows only"},
	"winkernel.enableDSR":                 {kind: unsupported, why: "Windows only"},
	"winkernel.rootHnsEndpointName":       {kind: unsupported, why: "Windows only"},
	"winkernel.forwardHealthCheckVip":     {kind: unsupported, why: "Windows only"},
	"detectLocalMode":                     {kind: unsupported, harmless: []string{"ClusterCIDR"}, why: "kipvs detects local traffic by clusterCIDR only"},
	"detectLocal.bridgeInterface":         {kind: unsupported, why: "kipvs detects local traffic by clusterCIDR only"},
	"detectLocal.interfaceNamePrefix":     {kind: unsupported, why: "kipvs detects local traffic by clusterCIDR only"},
	"clusterCIDR":                         {kind: applied},
	"nodePortAddresses":                   {kind: applied},
	"oomScoreAdj":                         {kind: unsupported, harmless: []string{"-999"}, why: "set the container's OOM score instead"},
	"conntrack.maxPerCore":                {kind: applied},
	"conntrack.min":                       {kind: applied},
	"conntrack.tcpEstablishedTimeout":     {kind: applied},
	"conntrack.tcpCloseWaitTimeout":       {kind: applied},
	"conntrack.tcpBeLiberal":              {kind: applied},
	"conntrack.udpTimeout":                {kind: applied},
	"conntrack.udpStreamTimeout":          {kind: applied},
	"configSyncPeriod":                    {kind: applied},
	"portRange":                           {kind: unsupported, why: "unused since kube-proxy's userspace mode was removed"},
	"windowsRunAsService":                 {kind: unsupported, why: "Windows only"},
}

var durationType = reflect.TypeFor[metav1.Duration]()

// walkFields calls fn with the JSON path and value of every leaf field of the
// struct v. Fields listed in fileFields are leaves even when they are structs
// (logging); the embedded TypeMeta is skipped (Decode checks it).
func walkFields(v reflect.Value, prefix string, fn func(path string, v reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		fv := v.Field(i)
		_, listed := fileFields[path]
		if !listed && fv.Kind() == reflect.Struct && fv.Type() != durationType {
			walkFields(fv, path, fn)
			continue
		}
		fn(path, fv)
	}
}

// render prints a field value the way it is written in the file.
func render(v reflect.Value) string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "null"
		}
		v = v.Elem()
	}
	if d, ok := v.Interface().(metav1.Duration); ok {
		return d.Duration.String()
	}
	if v.Kind() == reflect.Map {
		keys := v.MapKeys()
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%v: %v", k, v.MapIndex(k)))
		}
		slices.Sort(parts)
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v.Interface())
}

// fileWarnings names every field of cfg that is set but that kipvs does not apply.
func fileWarnings(cfg *v1alpha1.KubeProxyConfiguration) []string {
	var warnings []string
	walkFields(reflect.ValueOf(cfg).Elem(), "", func(path string, v reflect.Value) {
		if v.IsZero() {
			return
		}
		rule, listed := fileFields[path]
		if !listed {
			rule = fieldRule{kind: unsupported, why: "kipvs does not know this field"}
		}
		val := render(v)
		switch {
		case rule.kind == kept:
			warnings = append(warnings, fmt.Sprintf("%s=%s is not applied yet: kipvs does not manage conntrack settings yet", path, val))
		case rule.kind == unsupported && !slices.Contains(rule.harmless, val):
			w := fmt.Sprintf("%s=%s is not supported by kipvs and is ignored", path, val)
			if rule.why != "" {
				w += " (" + rule.why + ")"
			}
			warnings = append(warnings, w)
		}
	})
	return warnings
}

// merger copies file values into Options unless the command line set the
// matching flag, and records a warning when a flag overrides a different value.
type merger struct {
	o        *Options
	warnings []string
}

// mergeValue sets *dst to fileVal unless fileVal is the zero value (unset in the
// file) or one of flags was given on the command line.
func mergeValue[T comparable](m *merger, dst *T, fileVal T, path string, flags ...string) {
	var zero T
	if fileVal == zero {
		return
	}
	if m.o.changed(flags...) {
		if *dst != fileVal {
			m.overridden(flags[0], fmt.Sprint(*dst), path, fmt.Sprint(fileVal))
		}
		return
	}
	*dst = fileVal
}

// mergePtr is mergeValue for optional fields, where nil is unset and an
// explicit zero (e.g. conntrack.maxPerCore: 0, "leave the kernel's value") counts.
func mergePtr[T comparable](m *merger, dst **T, fileVal *T, path string, flags ...string) {
	if fileVal == nil {
		return
	}
	if m.o.changed(flags...) {
		if *dst == nil || **dst != *fileVal {
			cur := "<unset>"
			if *dst != nil {
				cur = fmt.Sprint(**dst)
			}
			m.overridden(flags[0], cur, path, fmt.Sprint(*fileVal))
		}
		return
	}
	v := *fileVal
	*dst = &v
}

// mergeList is mergeValue for lists; an empty list is unset.
func mergeList(m *merger, dst *[]string, fileVal []string, path string, flag string) {
	if len(fileVal) == 0 {
		return
	}
	if m.o.changed(flag) {
		if !slices.Equal(*dst, fileVal) {
			m.overridden(flag, strings.Join(*dst, ","), path, strings.Join(fileVal, ","))
		}
		return
	}
	*dst = slices.Clone(fileVal)
}

func (m *merger) overridden(flag, flagVal, path, fileVal string) {
	m.warnings = append(m.warnings, fmt.Sprintf("--%s=%s overrides %s=%s from the config file", flag, flagVal, path, fileVal))
}

// applyFile merges cfg into o: file values fill what the command line did not set.
func (o *Options) applyFile(cfg *v1alpha1.KubeProxyConfiguration) []string {
	m := &merger{o: o}
	mergeValue(m, &o.Mode, string(cfg.Mode), "mode", "proxy-mode")

	cc := cfg.ClientConnection
	mergeValue(m, &o.Kubeconfig, cc.Kubeconfig, "clientConnection.kubeconfig", "kubeconfig")
	mergeValue(m, &o.ContentType, cc.ContentType, "clientConnection.contentType", "kube-api-content-type")
	mergeValue(m, &o.AcceptContentTypes, cc.AcceptContentTypes, "clientConnection.acceptContentTypes")
	mergeValue(m, &o.QPS, cc.QPS, "clientConnection.qps", "kube-api-qps")
	mergeValue(m, &o.Burst, cc.Burst, "clientConnection.burst", "kube-api-burst")
	mergeValue(m, &o.ConfigSyncPeriod, cfg.ConfigSyncPeriod.Duration, "configSyncPeriod", "config-sync-period")

	mergeValue(m, &o.HostnameOverride, strings.TrimSpace(cfg.HostnameOverride), "hostnameOverride", "hostname-override")
	mergeList(m, &o.ClusterCIDRs, splitList(cfg.ClusterCIDR), "clusterCIDR", "cluster-cidr")
	mergeList(m, &o.NodePortAddresses, cfg.NodePortAddresses, "nodePortAddresses", "nodeport-addresses")
	mergeValue(m, &o.MasqueradeAll, cfg.IPTables.MasqueradeAll, "iptables.masqueradeAll", "masquerade-all")
	mergeValue(m, &o.HealthzBindAddress, cfg.HealthzBindAddress, "healthzBindAddress", "healthz-bind-address")
	mergeValue(m, &o.MetricsBindAddress, cfg.MetricsBindAddress, "metricsBindAddress", "metrics-bind-address")

	v := cfg.IPVS
	mergeValue(m, &o.Scheduler, v.Scheduler, "ipvs.scheduler", "ipvs-scheduler")
	mergeValue(m, &o.StrictARP, v.StrictARP, "ipvs.strictARP", "ipvs-strict-arp")
	mergeList(m, &o.ExcludeCIDRs, v.ExcludeCIDRs, "ipvs.excludeCIDRs", "ipvs-exclude-cidrs")
	mergeValue(m, &o.TCPTimeout, v.TCPTimeout.Duration, "ipvs.tcpTimeout", "ipvs-tcp-timeout")
	mergeValue(m, &o.TCPFinTimeout, v.TCPFinTimeout.Duration, "ipvs.tcpFinTimeout", "ipvs-tcpfin-timeout")
	mergeValue(m, &o.UDPTimeout, v.UDPTimeout.Duration, "ipvs.udpTimeout", "ipvs-udp-timeout")
	mergeValue(m, &o.SyncPeriod, v.SyncPeriod.Duration, "ipvs.syncPeriod", "sync-period", "ipvs-sync-period")
	mergeValue(m, &o.MinSyncPeriod, v.MinSyncPeriod.Duration, "ipvs.minSyncPeriod", "min-sync-period", "ipvs-min-sync-period")

	fc := conntrackFrom(cfg.Conntrack)
	mergePtr(m, &o.Conntrack.MaxPerCore, fc.MaxPerCore, "conntrack.maxPerCore", "conntrack-max-per-core")
	mergePtr(m, &o.Conntrack.Min, fc.Min, "conntrack.min", "conntrack-min")
	mergePtr(m, &o.Conntrack.TCPEstablishedTimeout, fc.TCPEstablishedTimeout, "conntrack.tcpEstablishedTimeout", "conntrack-tcp-timeout-established")
	mergePtr(m, &o.Conntrack.TCPCloseWaitTimeout, fc.TCPCloseWaitTimeout, "conntrack.tcpCloseWaitTimeout", "conntrack-tcp-timeout-close-wait")
	mergeValue(m, &o.Conntrack.TCPBeLiberal, fc.TCPBeLiberal, "conntrack.tcpBeLiberal", "conntrack-tcp-be-liberal")
	mergeValue(m, &o.Conntrack.UDPTimeout, fc.UDPTimeout, "conntrack.udpTimeout", "conntrack-udp-timeout")
	mergeValue(m, &o.Conntrack.UDPStreamTimeout, fc.UDPStreamTimeout, "conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream")
	m.warnings = append(m.warnings, o.mergeLogging(cfg.Logging)...)
	return m.warnings
}

func conntrackFrom(c v1alpha1.KubeProxyConntrackConfiguration) ConntrackOptions {
	dur := func(d *metav1.Duration) *time.Duration {
		if d == nil {
			return nil
		}
		return &d.Duration
	}
	return ConntrackOptions{
		MaxPerCore:            c.MaxPerCore,
		Min:                   c.Min,
		TCPEstablishedTimeout: dur(c.TCPEstablishedTimeout),
		TCPCloseWaitTimeout:   dur(c.TCPCloseWaitTimeout),
		TCPBeLiberal:          c.TCPBeLiberal,
		UDPTimeout:            c.UDPTimeout.Duration,
		UDPStreamTimeout:      c.UDPStreamTimeout.Duration,
	}
}

// mergeLogging makes the file's logging section the base and lets logging flags
// given on the command line override it, as kube-proxy does (so that
// `--config ... -v=5` works).
func (o *Options) mergeLogging(file logsapi.LoggingConfiguration) []string {
	base := file.DeepCopy()
	logsapi.SetRecommendedLoggingConfiguration(base)
	if o.fs == nil {
		*o.Logging = *base
		return nil
	}
	// Registering flags resets the two split-stream booleans to their defaults.
	textSplit, jsonSplit := base.Options.Text.SplitStream, base.Options.JSON.SplitStream
	var clone pflag.FlagSet
	logsapi.AddFlags(base, &clone)
	base.Options.Text.SplitStream, base.Options.JSON.SplitStream = textSplit, jsonSplit
	// --vmodule patterns from the command line come first, so they take priority.
	fileVModule := base.VModule
	base.VModule = nil

	var warnings []string
	clone.VisitAll(func(f *pflag.Flag) {
		given := o.fs.Lookup(f.Name)
		if given == nil || !given.Changed {
			return
		}
		if err := f.Value.Set(given.Value.String()); err != nil {
			warnings = append(warnings, fmt.Sprintf("--%s: %v", f.Name, err))
		}
	})
	base.VModule = append(base.VModule, fileVModule...)
	*o.Logging = *base
	return warnings
}

// splitList splits a comma-separated list, trimming blanks and dropping empty items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
