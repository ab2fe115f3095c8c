package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
)

func TestPredicates(t *testing.T) {
	k := VirtualServerKey{Protocol: TCP}
	tests := []struct {
		err             error
		notFound, exist bool
	}{
		{nil, false, false},
		{syscall.ESRCH, true, false},
		{vsError(opDeleteVS, k, syscall.ESRCH), true, false},
		{fmt.Errorf("outer: %w", rsError(opDeleteRS, k, RealServerKey{}, syscall.ENOENT)), true, false},
		{vsError(opAddVS, k, syscall.EEXIST), false, true},
		{vsError(opAddVS, k, syscall.EPERM), false, false},
		{errors.New("no such process"), false, false}, // text alone does not count
	}
	for _, tc := range tests {
		if IsNotFound(tc.err) != tc.notFound || IsExist(tc.err) != tc.exist {
			t.Errorf("%v: IsNotFound = %v, IsExist = %v; want %v, %v", tc.err, IsNotFound(tc.err), IsExist(tc.err), tc.notFound, tc.exist)
		}
	}
	if vsError(opAddVS, k, nil) != nil || rsError(opAddRS, k, RealServerKey{}, nil) != nil {
		t.Errorf("wrapping nil gave an error")
	}
	perm := permissionError("probe", syscall.EACCES)
	if !errors.Is(perm, ErrPermission) || !errors.Is(perm, syscall.EACCES) || errors.Is(perm, ErrNotSupported) {
		t.Errorf("permissionError = %v, want ErrPermission wrapping EACCES", perm)
	}
}

func TestKernelModules(t *testing.T) {
	mods := KernelModules()
	if mods[0] != "ip_vs" || mods[len(mods)-1] != "nf_conntrack" || len(mods) != len(Schedulers)+2 {
		t.Errorf("KernelModules() = %v", mods)
	}
	for _, s := range Schedulers {
		if !slices.Contains(mods, "ip_vs_"+s) {
			t.Errorf("KernelModules() lacks ip_vs_%s", s)
		}
	}
}
