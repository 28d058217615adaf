package loadbench

import (
	"os"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots draws the report's sweeps as PNGs in dir and returns the
// files written: CPU per message and its ratio by message size, and memory
// and heartbeat CPU by idle connection count. A sweep the report lacks is
// skipped.
func WritePlots(rep *Report, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	busy := ""
	if rep.Busy {
		busy = " (BUSY MACHINE)"
	}
	save := func(p *plot.Plot, name string) error {
		p.Title.Text += busy
		path := filepath.Join(dir, name)
		if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return err
		}
		files = append(files, path)
		return nil
	}

	// By message size (16 pairs, streaming).
	bySize := func(kind string, get func(Comparison) float64) plotter.XYs {
		var xys plotter.XYs
		for _, c := range rep.Comparisons {
			w := c.Workload
			if w.Kind == kind && w.Binaries*w.PhonesPer == 16 && get(c) > 0 {
				xys = append(xys, plotter.XY{X: float64(w.Size), Y: get(c)})
			}
		}
		sort.Slice(xys, func(i, j int) bool { return xys[i].X < xys[j].X })
		return dedupX(xys)
	}
	relayCPU := func(c Comparison) float64 { return c.Relay.CPUPerMsgUS }
	fwdCPU := func(c Comparison) float64 { return c.Forwarder.CPUPerMsgUS }
	if len(bySize(StreamP2B, relayCPU)) >= 2 {
		p := plot.New()
		p.Title.Text = "Server CPU per message by size (16 pairs, streaming)"
		p.X.Label.Text = "phone frame (bytes)"
		p.Y.Label.Text = "CPU per message (µs)"
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		p.Legend.Top, p.Legend.Left = true, true
		if err := plotutil.AddLinePoints(p,
			"relay phone->binary", bySize(StreamP2B, relayCPU),
			"forwarder phone->binary", bySize(StreamP2B, fwdCPU),
			"relay binary->phone", bySize(StreamB2P, relayCPU),
			"forwarder binary->phone", bySize(StreamB2P, fwdCPU)); err != nil {
			return files, err
		}
		if err := save(p, "cpu_per_msg_by_size.png"); err != nil {
			return files, err
		}

		p = plot.New()
		p.Title.Text = "CPU ratio by size: forwarder ÷ relay per message (1 = wire cost)"
		p.X.Label.Text = "phone frame (bytes)"
		p.Y.Label.Text = "ratio"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min, p.Y.Max = 0, 1.2
		p.Legend.Top = true
		ratio := func(c Comparison) float64 { return c.CPURatio.Median }
		if err := plotutil.AddLinePoints(p,
			"phone->binary", bySize(StreamP2B, ratio),
			"binary->phone", bySize(StreamB2P, ratio)); err != nil {
			return files, err
		}
		if err := save(p, "cpu_ratio_by_size.png"); err != nil {
			return files, err
		}
	}

	// By idle connection count.
	byConns := func(get func(Comparison) float64) plotter.XYs {
		var xys plotter.XYs
		for _, c := range rep.Comparisons {
			if c.Workload.Kind == Idle && get(c) != 0 {
				xys = append(xys, plotter.XY{X: float64(c.Workload.Conns), Y: get(c)})
			}
		}
		sort.Slice(xys, func(i, j int) bool { return xys[i].X < xys[j].X })
		return dedupX(xys)
	}
	if len(byConns(func(c Comparison) float64 { return c.Relay.RSSPerConnKiB })) >= 2 {
		conns := func(title, y string) *plot.Plot {
			p := plot.New()
			p.Title.Text = title
			p.X.Label.Text = "idle connections"
			p.Y.Label.Text = y
			p.X.Scale = plot.LogScale{}
			p.X.Tick.Marker = plot.LogTicks{Prec: -1}
			p.Y.Min = 0
			p.Legend.Top, p.Legend.Left = true, true
			return p
		}
		p := conns("Resident memory per idle connection", "KiB per connection")
		if err := plotutil.AddLinePoints(p,
			"relay (heartbeats on)", byConns(func(c Comparison) float64 { return c.Relay.RSSPerConnKiB }),
			"forwarder", byConns(func(c Comparison) float64 { return c.Forwarder.RSSPerConnKiB })); err != nil {
			return files, err
		}
		if err := save(p, "rss_per_conn_by_conns.png"); err != nil {
			return files, err
		}

		p = conns("Relay CPU while idle (heartbeats at the default 30 s), % of one core", "% of a core")
		if err := plotutil.AddLinePoints(p,
			"relay", byConns(func(c Comparison) float64 { return c.Relay.IdleCPUPercent })); err != nil {
			return files, err
		}
		if err := save(p, "idle_cpu_by_conns.png"); err != nil {
			return files, err
		}

		p = conns("Connection set-up rate (32 loopback dialers)", "connections per second")
		if err := plotutil.AddLinePoints(p,
			"relay", byConns(func(c Comparison) float64 { return c.Relay.SetupPerSec }),
			"forwarder", byConns(func(c Comparison) float64 { return c.Forwarder.SetupPerSec })); err != nil {
			return files, err
		}
		if err := save(p, "setup_rate_by_conns.png"); err != nil {
			return files, err
		}
	}
	return files, nil
}

// dedupX keeps the first point of each x (the sweeps can repeat a size
// the table also ran).
func dedupX(xys plotter.XYs) plotter.XYs {
	var out plotter.XYs
	for i, p := range xys {
		if i > 0 && p.X == xys[i-1].X {
			continue
		}
		out = append(out, p)
	}
	return out
}
