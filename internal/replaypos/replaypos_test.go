package replaypos_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/replaypos"
)

func TestParse(t *testing.T) {
	for name, want := range map[string]replaypos.Position{
		"replay-1.dev": {ICount: 1744759, LogOffset: 0x6e5},
		"replay-5.dev": {ICount: 249518269, LogOffset: 0x3178b},
	} {
		dev, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := replaypos.Parse(dev)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, want)
		}
		k := strings.Index(string(dev), "\x06replay")
		if _, err := replaypos.Parse(dev[:k+7+8+40]); err == nil || !strings.Contains(err.Error(), "ends inside") {
			t.Errorf("%s cut short: %v", name, err)
		}
		v3 := append([]byte(nil), dev...)
		binary.BigEndian.PutUint32(v3[k+7+4:], 3)
		if _, err := replaypos.Parse(v3); err == nil || !strings.Contains(err.Error(), "version 3") {
			t.Errorf("%s version 3: %v", name, err)
		}
		if _, err := replaypos.Parse(dev[:k]); !errors.Is(err, replaypos.ErrNoSection) {
			t.Errorf("%s without the section: %v", name, err)
		}
	}
	// The id string alone, not after a section header, is not the section.
	if _, err := replaypos.Parse([]byte("xxxxxxx\x06replay\x00\x00\x00\x00\x00\x00\x00\x02")); !errors.Is(err, replaypos.ErrNoSection) {
		t.Errorf("no header: %v", err)
	}
}
