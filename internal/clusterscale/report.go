package clusterscale

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WriteMarkdown writes the report's tables.
func (r *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Run %s: %.0f s, %d CPUs, loadavg %.2f %.2f %.2f at the start and %.2f %.2f %.2f at the end; lease %d ms, steady-state window %.0f s.\n\n",
		r.Started.Format("2006-01-02 15:04"), r.Seconds, r.CPUs, r.LoadStart[0], r.LoadStart[1], r.LoadStart[2],
		r.LoadEnd[0], r.LoadEnd[1], r.LoadEnd[2], r.LeaseMS, r.WindowS)

	fmt.Fprintln(w, "Steady state (no claim changing), counted over the window:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| instances | server-ids | KV writes/s | NATS msgs in/s | NATS msgs out/s | bucket keys | bucket bytes | bucket B/key | heap B/owned id | refresh errors | claims lost |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range r.Cells {
		if c.Err != "" {
			fmt.Fprintf(w, "| %d | %d | error: %s |\n", c.Instances, c.ServerIDs, oneLine(c.Err))
			continue
		}
		fmt.Fprintf(w, "| %d | %d | %.1f | %.1f | %.1f | %d | %d | %.0f | %.0f | %.0f | %.0f |\n",
			c.Instances, c.ServerIDs, c.KVWritesPerSec, c.NATSInPerSec, c.NATSOutPerSec, c.BucketKeys, c.BucketBytes,
			float64(c.BucketBytes)/float64(max(c.BucketKeys, 1)), c.HeapPerIDBytes, c.RefreshErrors, c.ClaimsLost)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Claims: loading (every instance claiming its share, 16 at a time) and latency (one fresh claim at a time on one instance, at steady state); failover (kill -9 of an owner, a survivor redialing its server-ids every 100 ms: time from the kill to each grant):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| instances | server-ids | claims/s loading | claim p50 | claim p99 | failover n | failover p50 | failover p99 | failover max | not granted |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range r.Cells {
		if c.Err != "" {
			continue
		}
		fo := "| – | – | – | – | – |"
		if len(c.FailoverMS) > 0 || c.FailoverMissed > 0 {
			fo = fmt.Sprintf("| %d | %s | %s | %s | %d |", len(c.FailoverMS), ms(percentile(c.FailoverMS, 50)), ms(percentile(c.FailoverMS, 99)), ms(maxOf(c.FailoverMS)), c.FailoverMissed)
		}
		fmt.Fprintf(w, "| %d | %d | %.0f | %s | %s %s\n", c.Instances, c.ServerIDs, c.ClaimsPerSec, us(c.LatencyP50US), us(c.LatencyP99US), fo)
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func ms(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// WritePlots draws the KV writes/s by server-ids and the failover times'
// distribution, one line per instance count, as PNGs in dir.
func (r *Report) WritePlots(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	byN := map[int][]Cell{}
	var ns []int
	for _, c := range r.Cells {
		if c.Err != "" {
			continue
		}
		if _, ok := byN[c.Instances]; !ok {
			ns = append(ns, c.Instances)
		}
		byN[c.Instances] = append(byN[c.Instances], c)
	}
	sort.Ints(ns)
	var files []string
	save := func(p *plot.Plot, name string) error {
		path := filepath.Join(dir, name)
		if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return err
		}
		files = append(files, path)
		return nil
	}

	p := plot.New()
	p.Title.Text = "Steady-state KV writes/s by server-ids (counted)"
	p.X.Label.Text = "server-ids owned across the cluster"
	p.Y.Label.Text = "KV writes per second"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	var lines []any
	for _, n := range ns {
		var xys plotter.XYs
		for _, c := range byN[n] {
			if c.KVWritesPerSec > 0 {
				xys = append(xys, plotter.XY{X: float64(c.ServerIDs), Y: c.KVWritesPerSec})
			}
		}
		if len(xys) > 0 {
			lines = append(lines, fmt.Sprintf("%d instances", n), xys)
		}
	}
	if len(lines) > 0 {
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return files, err
		}
		// Whole decades, so the log axes have labels at every scale.
		p.X.Min, p.X.Max = decade(p.X.Min, false), decade(p.X.Max, true)
		p.Y.Min, p.Y.Max = decade(p.Y.Min, false), decade(p.Y.Max, true)
		if err := save(p, "kv_writes_by_ids.png"); err != nil {
			return files, err
		}
	}

	p = plot.New()
	p.Title.Text = "Failover after kill -9 of an owner: time to each grant elsewhere (CDF)"
	p.X.Label.Text = "seconds from the kill"
	p.Y.Label.Text = "fraction of redialed server-ids granted"
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top, p.Legend.Left = true, true
	lines = lines[:0]
	for _, n := range ns {
		var all []float64
		for _, c := range byN[n] {
			all = append(all, c.FailoverMS...)
		}
		if len(all) == 0 {
			continue
		}
		sort.Float64s(all)
		xys := make(plotter.XYs, len(all))
		for i, v := range all {
			xys[i] = plotter.XY{X: v / 1000, Y: float64(i+1) / float64(len(all))}
		}
		lines = append(lines, fmt.Sprintf("%d instances (n=%d)", n, len(all)), xys)
	}
	if len(lines) > 0 {
		if err := plotutil.AddLines(p, lines...); err != nil {
			return files, err
		}
		p.X.Min = 0
		if err := save(p, "failover_cdf.png"); err != nil {
			return files, err
		}
	}
	return files, nil
}

// decade rounds v down (or up) to a power of ten.
func decade(v float64, up bool) float64 {
	d := 1.0
	for d > v {
		d /= 10
	}
	for d*10 <= v {
		d *= 10
	}
	if up && d < v {
		d *= 10
	}
	return d
}
