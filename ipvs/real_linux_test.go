//go:build linux

package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	mipvs "github.com/moby/ipvs"
)

// mobyTable is an in-memory kernel behind the mobyHandle interface, so Real's
// plumbing (conversions, sorting, skipping, error wrapping) is tested without
// a kernel. Like the kernel it sets the hashed flag on stored services, answers
// ESRCH/ENOENT/EEXIST, fills a destination's family from its service, and
// returns an empty destination list for a missing service.
type mobyTable struct {
	services map[string]*mipvs.Service
	dests    map[string][]*mipvs.Destination
	config   mipvs.Config
}

func newMobyTable() *mobyTable {
	return &mobyTable{services: map[string]*mipvs.Service{}, dests: map[string][]*mipvs.Destination{}}
}

func svcKey(s *mipvs.Service) string {
	if s.FWMark != 0 {
		return fmt.Sprintf("fwmark/%d", s.FWMark)
	}
	return fmt.Sprintf("%d/%s/%d", s.Protocol, s.Address, s.Port)
}

func (m *mobyTable) NewService(s *mipvs.Service) error {
	if _, ok := m.services[svcKey(s)]; ok {
		return syscall.EEXIST
	}
	c := *s
	c.Flags |= uint32(FlagHashed)
	m.services[svcKey(s)] = &c
	return nil
}

func (m *mobyTable) UpdateService(s *mipvs.Service) error {
	if _, ok := m.services[svcKey(s)]; !ok {
		return syscall.ESRCH
	}
	c := *s
	c.Flags |= uint32(FlagHashed)
	m.services[svcKey(s)] = &c
	return nil
}

func (m *mobyTable) DelService(s *mipvs.Service) error {
	if _, ok := m.services[svcKey(s)]; !ok {
		return syscall.ESRCH
	}
	delete(m.services, svcKey(s))
	delete(m.dests, svcKey(s))
	return nil
}

func (m *mobyTable) GetService(s *mipvs.Service) (*mipvs.Service, error) {
	if got, ok := m.services[svcKey(s)]; ok {
		return got, nil
	}
	return nil, syscall.ESRCH
}

func (m *mobyTable) GetServices() ([]*mipvs.Service, error) {
	var out []*mipvs.Service
	for _, s := range m.services {
		out = append(out, s)
	}
	return out, nil
}

func (m *mobyTable) GetDestinations(s *mipvs.Service) ([]*mipvs.Destination, error) {
	return m.dests[svcKey(s)], nil
}

// findDest returns the service's destinations and the index of d, or -1.
func (m *mobyTable) findDest(s *mipvs.Service, d *mipvs.Destination) (*mipvs.Service, int, error) {
	svc, ok := m.services[svcKey(s)]
	if !ok {
		return nil, -1, syscall.ESRCH
	}
	for i, o := range m.dests[svcKey(s)] {
		if o.Address.Equal(d.Address) && o.Port == d.Port {
			return svc, i, nil
		}
	}
	return svc, -1, nil
}

func (m *mobyTable) NewDestination(s *mipvs.Service, d *mipvs.Destination) error {
	svc, i, err := m.findDest(s, d)
	if err != nil {
		return err
	}
	if i >= 0 {
		return syscall.EEXIST
	}
	c := *d
	c.AddressFamily = svc.AddressFamily
	m.dests[svcKey(s)] = append(m.dests[svcKey(s)], &c)
	return nil
}

func (m *mobyTable) UpdateDestination(s *mipvs.Service, d *mipvs.Destination) error {
	_, i, err := m.findDest(s, d)
	if err == nil && i < 0 {
		err = syscall.ENOENT
	}
	if err != nil {
		return err
	}
	m.dests[svcKey(s)][i].Weight = d.Weight
	return nil
}

func (m *mobyTable) DelDestination(s *mipvs.Service, d *mipvs.Destination) error {
	_, i, err := m.findDest(s, d)
	if err == nil && i < 0 {
		err = syscall.ENOENT
	}
	if err != nil {
		return err
	}
	ds := m.dests[svcKey(s)]
	m.dests[svcKey(s)] = append(ds[:i:i], ds[i+1:]...)
	return nil
}

func (m *mobyTable) GetConfig() (*mipvs.Config, error) { c := m.config; return &c, nil }

func (m *mobyTable) SetConfig(c *mipvs.Config) error {
	for _, p := range []struct{ dst, v *time.Duration }{
		{&m.config.TimeoutTCP, &c.TimeoutTCP}, {&m.config.TimeoutTCPFin, &c.TimeoutTCPFin}, {&m.config.TimeoutUDP, &c.TimeoutUDP},
	} {
		if *p.v != 0 {
			*p.dst = *p.v
		}
	}
	return nil
}

func (m *mobyTable) Close() {}

func TestRealOverMobyTable(t *testing.T) {
	ctx := context.Background()
	table := newMobyTable()
	// A foreign firewall-mark service: Dump must skip it, not fail.
	table.services["fwmark/7"] = &mipvs.Service{FWMark: 7, Protocol: 6, AddressFamily: syscall.AF_INET, SchedName: "rr", Flags: 0x2}
	r := &Real{handle: table}

	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	web := withFlags(makeVS(t, "TCP 10.0.0.1:80", "rr"), FlagHashed, 0).VirtualServer
	dns := withFlags(makeVS(t, "UDP [fd00::1]:53", "sh"), FlagPersistent|FlagSHPort, 10800).VirtualServer
	mustOK(r.AddVirtualServer(ctx, dns))
	mustOK(r.AddVirtualServer(ctx, web))
	mustOK(r.AddRealServer(ctx, web.VirtualServerKey, makeRS("10.1.0.2:8080", 1).RealServer))
	mustOK(r.AddRealServer(ctx, web.VirtualServerKey, makeRS("10.1.0.1:8080", 1).RealServer))
	mustOK(r.AddRealServer(ctx, dns.VirtualServerKey, makeRS("[fd00::7]:53", 1).RealServer))
	mustOK(r.UpdateRealServer(ctx, web.VirtualServerKey, makeRS("10.1.0.2:8080", 0).RealServer))
	mustOK(r.DeleteRealServer(ctx, dns.VirtualServerKey, rsKey("[fd00::7]:53")))
	web.Scheduler = "wrr"
	mustOK(r.UpdateVirtualServer(ctx, web))

	vss, err := r.Dump(ctx)
	mustOK(err)
	want := `TCP 10.0.0.1:80 wrr
  -> 10.1.0.1:8080 weight 1
  -> 10.1.0.2:8080 weight 0
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`
	if got := FormatDump(vss); got != want {
		t.Errorf("Dump() =\n%s\nwant\n%s", got, want)
	}
	if stored := table.services[svcKey(&mipvs.Service{Protocol: 6, Address: net.IP{10, 0, 0, 1}, Port: 80})]; stored.Netmask != 0xffffffff || stored.AddressFamily != syscall.AF_INET {
		t.Errorf("service sent without host netmask or family: %+v", stored)
	}

	rss, err := r.RealServers(ctx, web.VirtualServerKey)
	if err != nil || len(rss) != 2 || rss[0].Address.String() != "10.1.0.1" {
		t.Errorf("RealServers() = %+v, %v; want 10.1.0.1 then 10.1.0.2", rss, err)
	}
	if _, err := r.RealServers(ctx, vsKey(t, "TCP 10.0.0.9:80")); !IsNotFound(err) {
		t.Errorf("RealServers(missing) error = %v, want IsNotFound", err)
	}

	errs := []struct {
		err  error
		want string
		is   func(error) bool
	}{
		{r.AddVirtualServer(ctx, web), "add virtual server TCP/10.0.0.1:80: file exists", IsExist},
		{r.DeleteVirtualServer(ctx, vsKey(t, "TCP 10.0.0.9:80")), "delete virtual server TCP/10.0.0.9:80: no such process", IsNotFound},
		{r.AddRealServer(ctx, vsKey(t, "TCP 10.0.0.9:80"), makeRS("10.1.0.1:1", 1).RealServer), "add real server TCP/10.0.0.9:80 -> 10.1.0.1:1: no such process", IsNotFound},
		{r.DeleteRealServer(ctx, web.VirtualServerKey, rsKey("10.1.0.9:1")), "delete real server TCP/10.0.0.1:80 -> 10.1.0.9:1: no such file or directory", IsNotFound},
		{r.AddRealServer(ctx, web.VirtualServerKey, makeRS("[fd00::9]:1", 1).RealServer), "differ in address family", func(err error) bool { return errors.Is(err, syscall.EINVAL) }},
	}
	for _, e := range errs {
		if e.err == nil || !strings.Contains(e.err.Error(), e.want) || !e.is(e.err) {
			t.Errorf("error = %v, want %q", e.err, e.want)
		}
	}

	mustOK(r.SetTimeouts(ctx, Timeouts{TCP: 900 * time.Second, UDP: 30 * time.Second}))
	mustOK(r.SetTimeouts(ctx, Timeouts{TCPFin: 60 * time.Second}))
	got, err := r.Timeouts(ctx)
	if want := (Timeouts{TCP: 900 * time.Second, TCPFin: 60 * time.Second, UDP: 30 * time.Second}); err != nil || got != want {
		t.Errorf("Timeouts() = %+v, %v; want %+v", got, err, want)
	}

	mustOK(r.DeleteVirtualServer(ctx, web.VirtualServerKey))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := r.AddVirtualServer(cancelled, web); !errors.Is(err, context.Canceled) {
		t.Errorf("AddVirtualServer(cancelled ctx) = %v, want context.Canceled", err)
	}
	if _, ok := table.services[svcKey(&mipvs.Service{Protocol: 6, Address: net.IP{10, 0, 0, 1}, Port: 80})]; ok {
		t.Errorf("write with a cancelled ctx reached the kernel")
	}
}
