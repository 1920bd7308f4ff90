package cli

import "testing"

func TestParseRelayServer(t *testing.T) {
	tests := []struct {
		in      string
		on      bool
		port    int // -1: no port given
		wantErr bool
	}{
		{"on", true, -1, false},
		{"true", true, -1, false},
		{"off", false, -1, false},
		{"false", false, -1, false},
		{"41700", true, 41700, false},
		{"0", true, 0, false},
		{"65536", false, -1, true},
		{"-1", false, -1, true},
		{"relay", false, -1, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			on, port, err := parseRelayServer(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			got := -1
			if port != nil {
				got = int(*port)
			}
			if on != tc.on || got != tc.port {
				t.Errorf("got on %v port %d, want on %v port %d", on, got, tc.on, tc.port)
			}
		})
	}
}
