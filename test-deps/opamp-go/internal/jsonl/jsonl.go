// Package jsonl prints events as JSON lines for the tests that drive the opamp-go harnesses.
package jsonl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Emitter serialises events from many goroutines onto one writer, one object per line.
type Emitter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func New(w io.Writer) *Emitter { return &Emitter{enc: json.NewEncoder(w)} }

// Emit writes {"event": event, "time": ..., fields...}.
func (e *Emitter) Emit(event string, fields map[string]any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if fields == nil {
		fields = map[string]any{}
	}
	fields["event"] = event
	fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
	_ = e.enc.Encode(fields)
}

// Logger adapts opamp-go's Logger interface to "log" events; debug lines only when Verbose.
type Logger struct {
	Out     *Emitter
	Verbose bool
}

func (l *Logger) Debugf(_ context.Context, format string, v ...any) {
	if l.Verbose {
		l.Out.Emit("log", map[string]any{"level": "debug", "message": fmt.Sprintf(format, v...)})
	}
}

func (l *Logger) Errorf(_ context.Context, format string, v ...any) {
	l.Out.Emit("log", map[string]any{"level": "error", "message": fmt.Sprintf(format, v...)})
}
