package dnsserver

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// txtAnswer is an upstream handler answering every query with n TXT records
// of size bytes each, cacheable for an hour.
func txtAnswer(n, size int) func(dns.ResponseWriter, *dns.Msg, bool) {
	v := strings.Repeat("x", size)
	return func(w dns.ResponseWriter, req *dns.Msg, _ bool) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		q := req.Question[0]
		for range n {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT, 3600), Txt: []string{v}})
		}
		_ = w.WriteMsg(m)
	}
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestResolverCacheMemoryBound floods the cache with distinct names whose
// upstream answers are large: the cache's memory stays within its byte budget
// (a count of entries alone let 3000 answers of 300 TXT records grow a daemon
// by 450 MB).
func TestResolverCacheMemoryBound(t *testing.T) {
	tests := []struct {
		name           string
		records, size  int
		queries        int
		limit          int64 // heap growth allowed
		wantCachedSome bool
	}{
		// ~50 KiB packed: above maxCacheEntry, forwarded each time.
		{name: "large answers", records: 250, size: 200, queries: 150, limit: 4 << 20},
		// ~13 KiB packed: cached until the byte budget is full.
		{name: "medium answers", records: 60, size: 200, queries: 900, limit: 10 << 20, wantCachedSome: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, txtAnswer(tt.records, tt.size))
			r := NewResolver(ResolverOptions{})
			r.SetRecords(testRecords(up.addr))

			before := heapInUse()
			for i := range tt.queries {
				res, err := r.Exchange(t.Context(), fmt.Sprintf("n%d.flood.example.", i), dns.TypeTXT)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Answer) != tt.records {
					t.Fatalf("query %d: %d answers (%s), want %d", i, len(res.Answer), res.Rcode, tt.records)
				}
			}
			after := heapInUse()
			entries, bytes := r.cache.usage()
			runtime.KeepAlive(r)

			if bytes > cacheBytes {
				t.Errorf("cache holds %d bytes in %d entries, want <= %d", bytes, entries, cacheBytes)
			}
			if tt.wantCachedSome && entries == 0 {
				t.Errorf("cache holds no entries, want the most recent answers")
			}
			// The budget plus slack; without a byte budget these floods hold
			// 15 MB and more.
			if grew := int64(after) - int64(before); grew > tt.limit {
				t.Errorf("heap grew by %.1f MiB over %d queries, want <= %d MiB", float64(grew)/(1<<20), tt.queries, tt.limit>>20)
			} else {
				t.Logf("heap grew by %.1f MiB over %d queries", float64(grew)/(1<<20), tt.queries)
			}

			// The most recent answer is still served from the cache.
			if tt.wantCachedSome {
				name := fmt.Sprintf("n%d.flood.example.", tt.queries-1)
				n := up.count()
				res, err := r.Exchange(t.Context(), name, dns.TypeTXT)
				if err != nil {
					t.Fatal(err)
				}
				if res.Source != "cache" || up.count() != n || len(res.Answer) != tt.records {
					t.Errorf("repeat of the last query: source %q, %d answers, upstream count %d -> %d; want a cache hit", res.Source, len(res.Answer), n, up.count())
				}
			}
		})
	}
}
