// Command report turns the raw measurements of bench/run.sh (one
// tab-separated line per round, workload, connection count and target) into
// the results table, medians across rounds, and checks the targets.
// It prints plain text on stdout and writes markdown to -md.
//
// Ratios (to direct, to stock Caddy, breaker to proxied) are computed per
// round, between measurements taken side by side, and their median is shown.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Raw columns, in the order run.sh writes them.
const (
	colRound = iota
	colWorkload
	colConns
	colTarget
	colRPS
	colP50
	colP99
	colRequests
	colNon2xx
	colSockErr
	colCPUTicks
	colNewConns
	colUpRequests
	colRSSKiB
	colSeconds
	colOther
	numCols
)

type sample struct {
	round    int
	workload string
	conns    int
	target   string
	rps      float64
	p50, p99 float64 // ms
	requests float64
	non2xx   float64
	sockErr  float64
	cpuUS    float64 // proxy CPU µs per request; NaN-free: -1 when not measured
	newPer1k float64 // -1 when not applicable
	rssMiB   float64 // -1 when not applicable
	otherPct float64 // other processes' CPU during the run, % of one CPU
}

type cell struct {
	workload string
	conns    int
	target   string
}

var (
	workloadOrder = []string{"get100", "put1k", "get1m", "breaker", "cached"}
	workloadName  = map[string]string{"get100": "GET 100 B", "put1k": "PUT 1 KiB", "get1m": "GET 1 MiB", "breaker": "breaker open", "cached": "GET 100 B, cached"}
	targetOrder   = []string{"direct", "gateway", "stock", "nginx", "floor"}
)

func main() {
	raw := flag.String("raw", "bench/out/raw.tsv", "raw measurements from run.sh")
	md := flag.String("md", "", "also write the report as markdown to this file")
	header := flag.String("header", "", "markdown written above the table (e.g. machine and command)")
	clkTck := flag.Float64("clk_tck", 100, "clock ticks per second of /proc/<pid>/stat")
	flag.Parse()

	samples, err := load(*raw, *clkTck)
	if err != nil {
		log.Fatalf("report: %v", err)
	}
	if len(samples) == 0 {
		log.Fatalf("report: no measurements in %s", *raw)
	}
	rows, checks := analyse(samples)

	writeText(os.Stdout, rows, checks)
	if *md != "" {
		f, err := os.Create(*md)
		if err != nil {
			log.Fatalf("report: %v", err)
		}
		if *header != "" {
			fmt.Fprintln(f, *header)
			fmt.Fprintln(f)
		}
		writeMarkdown(f, rows, checks)
		if err := f.Close(); err != nil {
			log.Fatalf("report: %v", err)
		}
	}
}

func load(path string, clkTck float64) ([]sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fs := strings.Split(text, "\t")
		if len(fs) != numCols {
			return nil, fmt.Errorf("%s:%d: %d columns, want %d", path, line, len(fs), numCols)
		}
		num := func(i int) float64 {
			if fs[i] == "-" || fs[i] == "" {
				return -1
			}
			v, perr := strconv.ParseFloat(fs[i], 64)
			if perr != nil {
				err = fmt.Errorf("%s:%d: column %d: %v", path, line, i+1, perr)
			}
			return v
		}
		s := sample{workload: fs[colWorkload], target: fs[colTarget]}
		s.round = int(num(colRound))
		s.conns = int(num(colConns))
		s.rps, s.p50, s.p99 = num(colRPS), num(colP50), num(colP99)
		s.requests, s.non2xx, s.sockErr = num(colRequests), num(colNon2xx), num(colSockErr)
		ticks, newConns, rss := num(colCPUTicks), num(colNewConns), num(colRSSKiB)
		s.cpuUS, s.newPer1k, s.rssMiB = -1, -1, -1
		if ticks >= 0 && s.requests > 0 {
			s.cpuUS = ticks / clkTck * 1e6 / s.requests
		}
		if newConns >= 0 && s.requests > 0 {
			s.newPer1k = newConns / s.requests * 1000
		}
		if rss >= 0 {
			s.rssMiB = rss / 1024
		}
		s.otherPct = num(colOther)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// errorsOf counts the answers that were not the expected kind: for the
// breaker workload every answer should be a 503, otherwise a 2xx.
func (s sample) errorsOf() float64 {
	if s.workload == "breaker" {
		return s.requests - s.non2xx + s.sockErr
	}
	return s.non2xx + s.sockErr
}

type row struct {
	cell
	rounds            int
	rps               float64
	vsDirect, vsStock float64 // -1: n/a
	vsProxied         float64 // breaker only: rps / gateway GET 100 B rps
	p50, p99          float64
	cpuUS, newPer1k   float64
	rssMiB            float64
	errors            float64
	otherPct          float64
}

type check struct {
	name, value, want string
	met               bool
	info              bool // a reference figure, not a target
}

func median(v []float64) float64 {
	var xs []float64
	for _, x := range v {
		if x >= 0 {
			xs = append(xs, x)
		}
	}
	if len(xs) == 0 {
		return -1
	}
	sort.Float64s(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func analyse(samples []sample) ([]row, []check) {
	by := map[cell][]sample{}
	byRound := map[cell]map[int]sample{}
	for _, s := range samples {
		c := cell{s.workload, s.conns, s.target}
		by[c] = append(by[c], s)
		if byRound[c] == nil {
			byRound[c] = map[int]sample{}
		}
		byRound[c][s.round] = s
	}
	// ratio is the median over rounds of a's rps / b's rps, both measured
	// in the same round.
	ratio := func(a, b cell, metric func(sample) float64) float64 {
		var rs []float64
		for round, sa := range byRound[a] {
			sb, ok := byRound[b][round]
			if !ok || metric(sb) <= 0 || metric(sa) < 0 {
				continue
			}
			rs = append(rs, metric(sa)/metric(sb))
		}
		return median(rs)
	}
	rpsOf := func(s sample) float64 { return s.rps }

	var conns []int
	seen := map[int]bool{}
	for c := range by {
		if !seen[c.conns] {
			seen[c.conns] = true
			conns = append(conns, c.conns)
		}
	}
	sort.Ints(conns)

	var rows []row
	for _, w := range workloadOrder {
		for _, n := range conns {
			for _, t := range targetOrder {
				c := cell{w, n, t}
				ss := by[c]
				if len(ss) == 0 {
					continue
				}
				var rps, p50, p99, cpu, nc, rss, other []float64
				var errSum float64
				for _, s := range ss {
					rps = append(rps, s.rps)
					p50 = append(p50, s.p50)
					p99 = append(p99, s.p99)
					cpu = append(cpu, s.cpuUS)
					if t != "direct" {
						nc = append(nc, s.newPer1k)
					}
					rss = append(rss, s.rssMiB)
					other = append(other, s.otherPct)
					errSum += s.errorsOf()
				}
				r := row{cell: c, rounds: len(ss), rps: median(rps), p50: median(p50), p99: median(p99),
					cpuUS: median(cpu), newPer1k: median(nc), rssMiB: median(rss), errors: errSum, otherPct: median(other),
					vsDirect: -1, vsStock: -1, vsProxied: -1}
				if t != "direct" {
					r.vsDirect = ratio(c, cell{w, n, "direct"}, rpsOf)
				}
				if t != "stock" {
					r.vsStock = ratio(c, cell{w, n, "stock"}, rpsOf)
				}
				if w == "breaker" || w == "cached" {
					r.vsProxied = ratio(c, cell{"get100", n, "gateway"}, rpsOf)
				}
				rows = append(rows, r)
			}
		}
	}
	return rows, targets(rows, ratio, conns)
}

func targets(rows []row, ratio func(a, b cell, m func(sample) float64) float64, conns []int) []check {
	find := func(w string, n int, t string) *row {
		for i := range rows {
			if rows[i].workload == w && rows[i].conns == n && rows[i].target == t {
				return &rows[i]
			}
		}
		return nil
	}
	var out []check
	add := func(name string, v float64, cmp string, want float64, unit string) {
		if v < 0 {
			return
		}
		met := v >= want
		if cmp == "<=" {
			met = v <= want
		} else if cmp == "<" {
			met = v < want
		}
		out = append(out, check{name: name, value: fmt.Sprintf("%.3f%s", v, unit), want: fmt.Sprintf("%s %.2f%s", cmp, want, unit), met: met})
	}
	for _, w := range []string{"get100", "put1k"} {
		for _, n := range conns {
			g, s := find(w, n, "gateway"), find(w, n, "stock")
			if g == nil || s == nil {
				continue
			}
			want := 1.4
			if n >= 256 {
				want = 1.7
			}
			if n == 32 || n == 256 {
				add(fmt.Sprintf("%s, %d conns: gateway rps / stock rps", workloadName[w], n), g.vsStock, ">=", want, "×")
			}
			add(fmt.Sprintf("%s, %d conns: gateway p99 / stock p99", workloadName[w], n), g.p99/s.p99, "<=", 1, "×")
			cpuRatio := ratio(cell{w, n, "gateway"}, cell{w, n, "stock"}, func(x sample) float64 { return x.cpuUS })
			add(fmt.Sprintf("%s, %d conns: gateway CPU/req / stock CPU/req", workloadName[w], n), cpuRatio, "<=", 0.7, "×")
			if n >= 256 {
				add(fmt.Sprintf("%s, %d conns: gateway new upstream conns per 1k requests", workloadName[w], n), g.newPer1k, "<", 2, "")
			}
		}
	}
	for _, n := range conns {
		if g := find("get1m", n, "gateway"); g != nil {
			add(fmt.Sprintf("GET 1 MiB, %d conns: gateway rps / direct rps", n), g.vsDirect, ">=", 0.85, "×")
			if s := find("get1m", n, "stock"); s != nil && g.rssMiB > 0 && s.rssMiB > 0 {
				add(fmt.Sprintf("GET 1 MiB, %d conns: gateway peak RSS / stock peak RSS", n), g.rssMiB/s.rssMiB, "<=", 1, "×")
			}
		}
	}
	for _, n := range conns {
		if c := find("cached", n, "gateway"); c != nil {
			add(fmt.Sprintf("cache hits, %d conns: local_cache GET 100 B rps / proxied GET 100 B rps", n), c.vsProxied, ">=", 2, "×")
		}
		if b := find("breaker", n, "gateway"); b != nil {
			add(fmt.Sprintf("breaker open, %d conns: rejections rps / gateway GET 100 B rps", n), b.vsProxied, ">=", 3, "×")
			if fl := find("breaker", n, "floor"); fl != nil {
				// Not a target: how close rejections come to Caddy's own floor.
				out = append(out, check{name: fmt.Sprintf("breaker open, %d conns: rejections rps / Caddy floor rps", n),
					value: fmt.Sprintf("%.3f×", b.rps/fl.rps), want: "—", info: true})
			}
		}
	}
	return out
}

func f(v float64, format string) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

var columns = []string{"workload", "conns", "target", "rps", "×direct", "×stock", "p50 ms", "p99 ms", "CPU µs/req", "new up conns/1k", "peak RSS MiB", "errors", "other CPU %"}

func cellsOf(r row) []string {
	vsStock := f(r.vsStock, "%.2f")
	if r.workload == "breaker" || r.workload == "cached" {
		vsStock = "—"
	}
	errs := fmt.Sprintf("%.0f", r.errors)
	if r.workload == "breaker" {
		errs += " (non-503)"
	}
	target := r.target
	if (r.workload == "breaker" || r.workload == "cached") && r.vsProxied >= 0 {
		target += fmt.Sprintf(" (%.2f× proxied)", r.vsProxied)
	}
	return []string{workloadName[r.workload], strconv.Itoa(r.conns), target, f(r.rps, "%.0f"),
		f(r.vsDirect, "%.2f"), vsStock, f(r.p50, "%.2f"), f(r.p99, "%.2f"), f(r.cpuUS, "%.1f"),
		f(r.newPer1k, "%.2f"), f(r.rssMiB, "%.1f"), errs, f(r.otherPct, "%.0f")}
}

func writeText(w io.Writer, rows []row, checks []check) {
	table := [][]string{columns}
	for _, r := range rows {
		table = append(table, cellsOf(r))
	}
	width := make([]int, len(columns))
	for _, line := range table {
		for i, c := range line {
			if n := len([]rune(c)); n > width[i] {
				width[i] = n
			}
		}
	}
	for _, line := range table {
		for i, c := range line {
			pad := width[i] - len([]rune(c))
			if i < 3 {
				fmt.Fprint(w, c+strings.Repeat(" ", pad))
			} else {
				fmt.Fprint(w, strings.Repeat(" ", pad)+c)
			}
			if i < len(line)-1 {
				fmt.Fprint(w, "  ")
			}
		}
		fmt.Fprintln(w)
	}
	if len(checks) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Targets:")
		for _, c := range checks {
			mark := "MISSED"
			if c.met {
				mark = "met   "
			} else if c.info {
				mark = "info  "
			}
			fmt.Fprintf(w, "  %s  %s: %s (want %s)\n", mark, c.name, c.value, c.want)
		}
	}
}

func writeMarkdown(w io.Writer, rows []row, checks []check) {
	fmt.Fprintln(w, "| "+strings.Join(columns, " | ")+" |")
	align := make([]string, len(columns))
	for i := range align {
		if i < 3 {
			align[i] = "---"
		} else {
			align[i] = "---:"
		}
	}
	fmt.Fprintln(w, "|"+strings.Join(align, "|")+"|")
	for _, r := range rows {
		fmt.Fprintln(w, "| "+strings.Join(cellsOf(r), " | ")+" |")
	}
	if len(checks) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| target | measured | wanted | |")
		fmt.Fprintln(w, "|---|---:|---:|---|")
		for _, c := range checks {
			mark := "**missed**"
			if c.met {
				mark = "met"
			} else if c.info {
				mark = "(reference)"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", c.name, c.value, c.want, mark)
		}
	}
}
