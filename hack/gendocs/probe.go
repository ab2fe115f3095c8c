package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/kipvs/kipvs/proxier/config"
)

// Status says what kipvs does with a KubeProxyConfiguration field.
type Status string

// Field statuses, as kipvs's loader reports them.
const (
	// Applied fields take effect; no warning names them.
	Applied Status = "applied"
	// Kept fields are read but not applied yet; a warning names them when set.
	Kept Status = "kept"
	// Unsupported fields are ignored; a warning names them when set.
	Unsupported Status = "unsupported"
)

// silentNote marks an unsupported field that no value makes kipvs warn about.
const silentNote = "ignored without a warning"

// Field is one leaf field of KubeProxyConfiguration and what kipvs does with it.
type Field struct {
	// Path is the field's JSON path, e.g. ipvs.scheduler.
	Path string
	// Type is the field's type as written in the file.
	Type string
	// Status is what kipvs does with it.
	Status Status
	// Flag is the flag that overrides it, empty for none.
	Flag string
	// Note is the reason kipvs gives in its warning.
	Note string
	// SilentDefault is kube-proxy's default of an unsupported field when kipvs
	// accepts that value without a warning, else empty.
	SilentDefault string
}

// Flag is one of kipvs's command-line flags.
type Flag struct {
	Name, Shorthand, Type, Default, Usage string
	// Fields are the config file fields the flag overrides.
	Fields []string
	// AliasOf names the flag this one is another name for, empty for none.
	AliasOf string
	// Logging is true for the component-base logging flags.
	Logging bool
}

// Reference is everything configuration.md is generated from.
type Reference struct {
	Flags  []Flag
	Fields []Field
}

// kubeProxyDefaults are kube-proxy's defaults (kubernetes pkg/proxy/apis/config/
// v1alpha1/defaults.go) for fields kipvs does not apply. kubeadm writes some
// of them into config.conf; the generator asks kipvs's loader which of them it
// accepts without a warning.
var kubeProxyDefaults = map[string]any{
	"bindAddress":                 "0.0.0.0",
	"iptables.masqueradeBit":      14,
	"iptables.localhostNodePorts": true,
	"iptables.syncPeriod":         "30s",
	"iptables.minSyncPeriod":      "1s",
	"nftables.masqueradeBit":      14,
	"nftables.syncPeriod":         "30s",
	"nftables.minSyncPeriod":      "1s",
	"detectLocalMode":             "ClusterCIDR",
	"oomScoreAdj":                 -999,
}

// leafTypes are struct types that are one field in the file.
var leafTypes = []reflect.Type{reflect.TypeFor[metav1.Duration](), reflect.TypeFor[logsapi.LoggingConfiguration]()}

// leaf is a field found by walking KubeProxyConfiguration.
type leaf struct {
	path string
	typ  reflect.Type
}

// leaves returns every leaf field of t by JSON path, in declaration order;
// the embedded TypeMeta is skipped.
func leaves(t reflect.Type, prefix string) []leaf {
	var out []leaf
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		if f.Type.Kind() == reflect.Struct && !isLeafType(f.Type) {
			out = append(out, leaves(f.Type, path)...)
			continue
		}
		out = append(out, leaf{path: path, typ: f.Type})
	}
	return out
}

func isLeafType(t reflect.Type) bool {
	for _, l := range leafTypes {
		if t == l {
			return true
		}
	}
	return false
}

// fileProbe is a value for a field of type t that is set (not the zero value)
// and that decodes; it need not pass validation, since the loader reports
// what it does with each field before it validates.
func fileProbe(t reflect.Type) any {
	switch {
	case t.Kind() == reflect.Pointer:
		return fileProbe(t.Elem())
	case t == reflect.TypeFor[metav1.Duration]():
		return "7s"
	case t == reflect.TypeFor[logsapi.LoggingConfiguration]():
		return map[string]any{"verbosity": 7}
	}
	switch t.Kind() {
	case reflect.String:
		return "probe"
	case reflect.Bool:
		return true
	case reflect.Int32, reflect.Int64, reflect.Int, reflect.Float32, reflect.Float64:
		return 7
	case reflect.Slice:
		return []any{fileProbe(t.Elem())}
	case reflect.Map:
		return map[string]any{"Probe": fileProbe(t.Elem())}
	}
	panic(fmt.Sprintf("no probe value for %v", t))
}

// flagProbe is a command-line value for a flag of type typ that differs from
// fileProbe's values, so that the loader reports the override.
func flagProbe(typ string) string {
	switch typ {
	case "bool":
		return "false"
	case "duration":
		return "9s"
	case "int32", "float32":
		return "9"
	}
	return "flag-probe"
}

// typeName is how a field's type is written in the docs.
func typeName(t reflect.Type) string {
	switch {
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t == reflect.TypeFor[metav1.Duration]():
		return "duration"
	case t == reflect.TypeFor[logsapi.LoggingConfiguration]():
		return "LoggingConfiguration"
	case t.Kind() == reflect.Slice:
		return "[]" + typeName(t.Elem())
	case t.Kind() == reflect.Map:
		return "map[" + typeName(t.Key()) + "]" + typeName(t.Elem())
	}
	return t.Kind().String()
}

// Warnings of kipvs's loader that the generator reads (proxier/config file.go).
var (
	unsupportedRE = regexp.MustCompile(`^config file [^:]*: ([A-Za-z.]+)=.* is not supported by kipvs and is ignored(?: \((.*)\))?$`)
	keptRE        = regexp.MustCompile(`^config file [^:]*: ([A-Za-z.]+)=.* is not applied yet: (.*)$`)
	overrideRE    = regexp.MustCompile(`^--([a-z0-9-]+)=.* overrides ([A-Za-z.]+)=.* from the config file$`)
)

// Probe asks kipvs's loader (config.Options) what it does with every flag and
// every field of KubeProxyConfiguration. The flags come from
// config.NewOptions().AddFlags and the fields from the KubeProxyConfiguration
// type. Each field is set alone in a file given to Options.Complete: a warning
// naming it makes it kept or unsupported (with the warning's reason); without
// one, it is applied when it changed the resolved Options and ignored silently
// otherwise. One more run sets every field and every flag, and the warnings
// about flags overriding the file map flags to fields. dir holds the probe files.
func Probe(dir string) (*Reference, error) {
	all := leaves(reflect.TypeFor[v1alpha1.KubeProxyConfiguration](), "")
	baseline, err := complete(dir, nil, nil)
	if err != nil {
		return nil, err
	}
	ref := &Reference{}
	for _, l := range all {
		r, err := complete(dir, map[string]any{l.path: fileProbe(l.typ)}, nil)
		if err != nil {
			return nil, err
		}
		f := Field{Path: l.path, Type: typeName(l.typ), Status: Unsupported, Note: silentNote}
		switch note, status, ok := warningFor(r.warnings, l.path); {
		case ok:
			f.Status, f.Note = status, note
		case r.options != baseline.options:
			f.Status, f.Note = Applied, ""
		}
		ref.Fields = append(ref.Fields, f)
	}

	values := map[string]any{}
	for _, l := range all {
		values[l.path] = fileProbe(l.typ)
	}
	fs := pflag.NewFlagSet("kipvs", pflag.ContinueOnError)
	fs.SortFlags = false
	r, err := complete(dir, values, fs)
	if err != nil {
		return nil, err
	}
	fieldFlags := map[string]string{}
	for _, w := range r.warnings {
		if m := overrideRE.FindStringSubmatch(w); m != nil {
			fieldFlags[m[2]] = m[1]
		}
	}
	ref.Flags = flags(fs, fieldFlags)

	// Which of kube-proxy's defaults of unsupported fields pass silently.
	defaults := map[string]any{}
	for _, f := range ref.Fields {
		if v, ok := kubeProxyDefaults[f.Path]; ok && f.Status == Unsupported {
			defaults[f.Path] = v
		}
	}
	if r, err = complete(dir, defaults, nil); err != nil {
		return nil, err
	}
	for i := range ref.Fields {
		f := &ref.Fields[i]
		f.Flag = fieldFlags[f.Path]
		if v, ok := defaults[f.Path]; ok && f.Note != silentNote {
			if _, _, warned := warningFor(r.warnings, f.Path); !warned {
				f.SilentDefault = fmt.Sprint(v)
			}
		}
	}
	return ref, nil
}

// warningFor finds the loader's warning about the field path: its reason and
// whether the field is kept or unsupported.
func warningFor(warnings []string, path string) (note string, status Status, ok bool) {
	for _, w := range warnings {
		if m := unsupportedRE.FindStringSubmatch(w); m != nil && m[1] == path {
			return m[2], Unsupported, true
		}
		if m := keptRE.FindStringSubmatch(w); m != nil && m[1] == path {
			return m[2], Kept, true
		}
	}
	return "", "", false
}

// result is what one run of Options.Complete gave.
type result struct {
	warnings []string
	// options is the resolved Options as JSON (exported fields), to tell
	// whether a field had an effect.
	options string
}

// complete writes values (JSON path -> value) as a KubeProxyConfiguration
// file and runs Options.Complete on it. With fs, kipvs's flags are registered
// on fs and every one that is not a logging flag is set to a probe value.
func complete(dir string, values map[string]any, fs *pflag.FlagSet) (result, error) {
	doc := map[string]any{"apiVersion": v1alpha1.SchemeGroupVersion.String(), "kind": "KubeProxyConfiguration"}
	for path, v := range values {
		m := doc
		parts := strings.Split(path, ".")
		for _, p := range parts[:len(parts)-1] {
			if m[p] == nil {
				m[p] = map[string]any{}
			}
			m = m[p].(map[string]any)
		}
		m[parts[len(parts)-1]] = v
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return result{}, err
	}
	file := filepath.Join(dir, "probe.conf")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return result{}, err
	}
	opts := config.NewOptions()
	if fs != nil {
		opts.AddFlags(fs)
		logging := loggingFlags()
		var errs []string
		fs.VisitAll(func(f *pflag.Flag) {
			if logging[f.Name] || f.Name == "config" {
				return
			}
			if err := fs.Set(f.Name, flagProbe(f.Value.Type())); err != nil {
				errs = append(errs, fmt.Sprintf("--%s: %v", f.Name, err))
			}
		})
		if len(errs) > 0 {
			return result{}, fmt.Errorf("setting probe flags: %s", strings.Join(errs, "; "))
		}
	}
	opts.ConfigFile = file
	// Validation fails on probe values; the warnings come before validation.
	_, warnings, _ := opts.Complete()
	state, err := json.Marshal(opts)
	if err != nil {
		return result{}, err
	}
	return result{warnings: warnings, options: string(state)}, nil
}

// loggingFlags are the names of the flags logsapi.AddFlags registers.
func loggingFlags() map[string]bool {
	fs := pflag.NewFlagSet("logging", pflag.ContinueOnError)
	logsapi.AddFlags(logsapi.NewLoggingConfiguration(), fs)
	names := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
	return names
}

// flags lists the flags of fs in registration order, with the fields they
// override (fieldFlags: field -> flag) and their aliases: two flags bound to
// the same variable are one setting under two names.
func flags(fs *pflag.FlagSet, fieldFlags map[string]string) []Flag {
	logging := loggingFlags()
	firstByVar := map[uintptr]string{}
	var out []Flag
	fs.VisitAll(func(f *pflag.Flag) {
		fl := Flag{Name: f.Name, Shorthand: f.Shorthand, Type: f.Value.Type(), Default: f.DefValue, Usage: f.Usage, Logging: logging[f.Name]}
		if fl.Type == "stringSlice" && fl.Default == "[]" {
			fl.Default = ""
		}
		if v := reflect.ValueOf(f.Value); v.Kind() == reflect.Pointer {
			if first, ok := firstByVar[v.Pointer()]; ok {
				fl.AliasOf = first
			} else {
				firstByVar[v.Pointer()] = f.Name
			}
		}
		out = append(out, fl)
	})
	for i := range out {
		name := out[i].Name
		if out[i].AliasOf != "" {
			name = out[i].AliasOf
		}
		for path, flag := range fieldFlags {
			if flag == name {
				out[i].Fields = append(out[i].Fields, path)
			}
		}
		slices.Sort(out[i].Fields)
		if out[i].Logging {
			out[i].Fields = []string{"logging"}
		}
	}
	return out
}
