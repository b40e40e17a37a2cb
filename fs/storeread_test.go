package fs

import (
	"testing"
	"time"
)

func BenchmarkStoreRead(b *testing.B) {
	d := getBench(b)
	src := d.source("disk")
	fr, err := src.OpenCheckpoint("disk", 0)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	fr.DataFrames()
	b.Logf("resolve %v", time.Since(t0))
	ext := extentsOf(d.ws)
	buf := make([]byte, 1<<20)
	b.ResetTimer()
	for range b.N {
		for _, e := range pieces(ext) {
			if err := fr.ReadFrames(e.start, buf[:(e.end-e.start)*pageSize]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(ext.frames() * pageSize))
}
