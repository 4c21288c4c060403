/* The hot path of k2jobs: a chunk's common, valid, unquoted rows to Kafka message values and headers.
 *
 * It accepts a line only when k2jobs.records' whole-line pattern accepts it AND every text field is
 * printable ASCII that needs no JSON escaping; it then writes exactly the bytes RowParser writes
 * (tests/test_fastrows.py compares the two on generated and real rows). Every other line -- blank,
 * quoted, invalid, not ASCII, out-of-range clock, not a calendar date, an hour the clocks skip when
 * daylight saving starts -- is handed back to Python ("deferred"), which either accepts it or names the
 * problem. So this file has no error messages and no time-zone rules: the start of each (date, hour) in
 * exchange time comes from a Python callable, which answers None for a date or hour that does not exist.
 *
 * Given `avro` (the constant pieces from k2jobs.avro.AvroRowParser.compiled_parts()), it writes the
 * TradeV2 / QuoteV2 value in Confluent's wire format instead, exactly as AvroRowParser does, deferring
 * also rows whose prices or quantities do not fit decimal(18,8); `ingestion` is then in microseconds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { KIND_TRADE = 0, KIND_QUOTE = 1 };
#define MAX_LINE 512 /* longer lines go to Python; keeps the output buffer bounded */

typedef struct {
    PyObject_HEAD
    int kind;
    PyObject *head;       /* bytes: '{"symbol":"BHP","company_id":7078,"exchange":"ASX"' */
    PyObject *hour_ms;    /* callable(date: str, hour: int) -> int | None (None: no such date or local hour) */
    PyObject *job_header; /* ("job_id", b"...") shared by every message */
    PyObject *source;     /* "source" */
    PyObject *prefix;     /* bytes: "trades/7078.csv:" */
    PyObject *avro;       /* None, or (wire header, symbol+exchange+asset class, currency[+side], company entry) */
    char *out;            /* room for one value */
    char cached_date[10];
    int cached_hour; /* -1: nothing cached */
    long long cached_ms;
} FastRows;

typedef struct {
    const char *p, *e;
} Cursor;

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A run of 1..max ASCII digits; 0 when there is none or it is longer. */
static inline Py_ssize_t digit_run(Cursor *c, Py_ssize_t max) {
    const char *start = c->p;
    while (c->p < c->e && is_digit(*c->p)) c->p++;
    Py_ssize_t n = c->p - start;
    return (n >= 1 && n <= max) ? n : 0;
}

static inline int take(Cursor *c, char ch) {
    if (c->p < c->e && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* Exactly two digits as a number, or -1. */
static inline int two_digits(Cursor *c) {
    if (c->e - c->p < 2 || !is_digit(c->p[0]) || !is_digit(c->p[1])) return -1;
    int v = (c->p[0] - '0') * 10 + (c->p[1] - '0');
    c->p += 2;
    return v;
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} Span;

/* \d{1,12}(\.\d{1,6})? */
static int price(Cursor *c, Span *out) {
    out->s = c->p;
    if (!digit_run(c, 12)) return 0;
    if (take(c, '.') && !digit_run(c, 6)) return 0;
    out->n = c->p - out->s;
    return 1;
}

/* \d{1,18} */
static int integer(Cursor *c, Span *out) {
    out->s = c->p;
    out->n = digit_run(c, 18);
    return out->n != 0;
}

/* Text up to the next comma (or the end): printable ASCII without '"' or '\\', so it needs no escaping. */
static int plain_text(Cursor *c, Span *out, int last) {
    out->s = c->p;
    while (c->p < c->e && *c->p != ',') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') return 0;
        c->p++;
    }
    out->n = c->p - out->s;
    return last ? c->p == c->e : 1;
}

static inline char *put(char *w, const char *s, Py_ssize_t n) {
    memcpy(w, s, (size_t)n);
    return w + n;
}
#define PUT_LIT(w, lit) put((w), (lit), (Py_ssize_t)sizeof(lit) - 1)

static char *put_ll(char *w, long long v) {
    char tmp[24];
    int i = 0;
    unsigned long long u = v < 0 ? (unsigned long long)(-(v + 1)) + 1 : (unsigned long long)v;
    if (v < 0) *w++ = '-';
    do {
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (i) *w++ = tmp[--i];
    return w;
}

/* An integer as JSON: its digits without leading zeros, as Python's int() then str() gives. */
static char *put_int(char *w, Span v) {
    while (v.n > 1 && v.s[0] == '0') {
        v.s++;
        v.n--;
    }
    return put(w, v.s, v.n);
}

static char *put_text(char *w, Span v) {
    if (v.n == 0) return PUT_LIT(w, "null");
    *w++ = '"';
    w = put(w, v.s, v.n);
    *w++ = '"';
    return w;
}

/* -- Avro binary (k2jobs/avro.py) ------------------------------------------------------------- */

/* An Avro long: zig-zag, then 7 bits per byte, low bits first. */
static char *put_varlong(char *w, long long v) {
    unsigned long long z = ((unsigned long long)v << 1) ^ (unsigned long long)(v >> 63);
    while (z >= 0x80) {
        *w++ = (char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    *w++ = (char)z;
    return w;
}

/* An Avro string or bytes: length, then the bytes. */
static char *put_avro_str(char *w, const char *s, Py_ssize_t n) {
    w = put_varlong(w, n);
    return put(w, s, n);
}

static char *put_avro_piece(char *w, PyObject *avro, Py_ssize_t i) {
    PyObject *piece = PyTuple_GET_ITEM(avro, i);
    return put(w, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece));
}

#define MAX_UNSCALED 1000000000000000000LL /* decimal(18, 8): below 10^18 */
#define SCALE_FACTOR 100000000LL

/* A price span (\d{1,12}(\.\d{1,6})?) times 10^8, or -1 beyond decimal(18, 8). */
static long long unscaled_price(Span v) {
    long long whole = 0, frac = 0;
    Py_ssize_t i = 0;
    for (; i < v.n && v.s[i] != '.'; i++) whole = whole * 10 + (v.s[i] - '0');
    int places = 0;
    if (i < v.n) {
        for (i++; i < v.n; i++, places++) frac = frac * 10 + (v.s[i] - '0');
    }
    for (; places < 8; places++) frac *= 10;
    if (whole >= MAX_UNSCALED / SCALE_FACTOR) return -1;
    return whole * SCALE_FACTOR + frac;
}

/* An integer span (\d{1,18}) times 10^8, or -1 beyond decimal(18, 8). */
static long long unscaled_quantity(Span v) {
    long long whole = 0;
    for (Py_ssize_t i = 0; i < v.n; i++) whole = whole * 10 + (v.s[i] - '0');
    if (whole >= MAX_UNSCALED / SCALE_FACTOR) return -1;
    return whole * SCALE_FACTOR;
}

/* An Avro bytes decimal: big-endian two's complement in (bit length + 8) / 8 bytes, as fastavro writes it. */
static char *put_decimal(char *w, long long unscaled) {
    int bits = unscaled ? 64 - __builtin_clzll((unsigned long long)unscaled) : 0; /* bit length */
    int n = (bits + 8) / 8;
    w = put_varlong(w, n);
    for (int i = n - 1; i >= 0; i--) *w++ = (char)(((unsigned long long)unscaled >> (8 * i)) & 0xff);
    return w;
}

/* An integer span as an Avro string of its digits without leading zeros (Python's str(int(...))). */
static char *put_int_str(char *w, Span v) {
    while (v.n > 1 && v.s[0] == '0') {
        v.s++;
        v.n--;
    }
    return put_avro_str(w, v.s, v.n);
}

/* The TradeV2 / QuoteV2 value of a checked row (fields f, exchange time ts in ms); 0 to defer. */
static Py_ssize_t format_avro(FastRows *self, Span *f, long long ts, long long ingestion_us, long long line_no) {
    int trade = self->kind == KIND_TRADE;
    long long dec[4];
    if (trade) {
        dec[0] = unscaled_price(f[0]);
        dec[1] = unscaled_quantity(f[1]);
    } else { /* schema order: bid_price, bid_quantity, ask_price, ask_quantity */
        dec[0] = unscaled_price(f[0]);
        dec[1] = unscaled_quantity(f[2]);
        dec[2] = unscaled_price(f[1]);
        dec[3] = unscaled_quantity(f[3]);
    }
    for (int i = 0; i < (trade ? 2 : 4); i++) {
        if (dec[i] < 0) return 0; /* Python names the field that does not fit */
    }
    long long ts_us = ts * 1000;
    /* message_id = trade_id/quote_id = "<path>:<line>:<exchange time in us>" */
    char id[600];
    char *p = put(id, PyBytes_AS_STRING(self->prefix), PyBytes_GET_SIZE(self->prefix));
    p = put_ll(p, line_no);
    *p++ = ':';
    p = put_ll(p, ts_us);
    Py_ssize_t id_len = p - id;

    char *w = self->out;
    w = put_avro_piece(w, self->avro, 0);
    w = put_avro_str(w, id, id_len);
    w = put_avro_str(w, id, id_len);
    w = put_avro_piece(w, self->avro, 1);
    w = put_varlong(w, ts_us);
    for (int i = 0; i < (trade ? 2 : 4); i++) w = put_decimal(w, dec[i]);
    w = put_avro_piece(w, self->avro, 2);
    if (trade) { /* trade_conditions: one block of one item, then the end */
        *w++ = 2;
        w = put_int_str(w, f[2]);
        *w++ = 0;
    }
    *w++ = 0; /* source_sequence: null */
    w = put_varlong(w, ingestion_us);
    *w++ = 2; /* platform_sequence: the long branch */
    w = put_varlong(w, line_no);
    *w++ = 2; /* vendor_data: the map branch, one block */
    w = put_varlong(w, trade ? 2 + (f[3].n > 0) + (f[4].n > 0) : 1);
    w = put_avro_piece(w, self->avro, 3);
    if (trade) {
        w = PUT_LIT(w, "\x14" "qualifiers");
        w = put_int_str(w, f[2]);
        if (f[3].n > 0) {
            w = PUT_LIT(w, "\x0a" "venue");
            w = put_avro_str(w, f[3].s, f[3].n);
        }
        if (f[4].n > 0) {
            w = PUT_LIT(w, "\x10" "buyer_id");
            w = put_avro_str(w, f[4].s, f[4].n);
        }
    }
    *w++ = 0; /* end of the map */
    return w - self->out;
}

/* Epoch ms at the start of the line's hour; 1 ok, 0 defer (no such date or hour), -1 Python error. */
static int hour_start(FastRows *self, const char *date, int hour, long long *ms) {
    if (self->cached_hour == hour && memcmp(self->cached_date, date, 10) == 0) {
        *ms = self->cached_ms;
        return 1;
    }
    PyObject *result = PyObject_CallFunction(self->hour_ms, "s#i", date, (Py_ssize_t)10, hour);
    if (result == NULL) return -1;
    if (result == Py_None) {
        Py_DECREF(result);
        return 0;
    }
    long long v = PyLong_AsLongLong(result);
    Py_DECREF(result);
    if (v == -1 && PyErr_Occurred()) return -1;
    memcpy(self->cached_date, date, 10);
    self->cached_hour = hour;
    self->cached_ms = v;
    *ms = v;
    return 1;
}

/* One line (without its '\n') to a value in self->out: its length, 0 to defer, -1 on a Python error. */
static Py_ssize_t format_row(FastRows *self, const char *s, const char *e, long long ingestion, long long line_no) {
    if (e > s && e[-1] == '\r') e--;
    if (e - s > MAX_LINE) return 0;
    Cursor c = {s, e};
    /* MM/DD/YYYY */
    const char *date = c.p;
    if (e - s < 10) return 0;
    for (int i = 0; i < 10; i++) {
        if (i == 2 || i == 5 ? date[i] != '/' : !is_digit(date[i])) return 0;
    }
    c.p += 10;
    if (!take(&c, ',')) return 0;
    /* HH:MM:SS(.f{1,3})? */
    int hh = two_digits(&c);
    if (hh < 0 || !take(&c, ':')) return 0;
    int mm = two_digits(&c);
    if (mm < 0 || !take(&c, ':')) return 0;
    int ss = two_digits(&c);
    if (ss < 0) return 0;
    int millis = 0;
    if (take(&c, '.')) {
        const char *f = c.p;
        Py_ssize_t n = digit_run(&c, 3);
        if (!n) return 0;
        for (int i = 0; i < 3; i++) millis = millis * 10 + (i < n ? f[i] - '0' : 0);
    }
    if (!take(&c, ',') || hh > 23 || mm > 59 || ss > 59) return 0;

    Span f[5];
    int ok;
    if (self->kind == KIND_TRADE) {
        ok = price(&c, &f[0]) && take(&c, ',') && integer(&c, &f[1]) && take(&c, ',') && integer(&c, &f[2]) &&
             take(&c, ',') && plain_text(&c, &f[3], 0) && take(&c, ',') && plain_text(&c, &f[4], 1);
    } else {
        ok = price(&c, &f[0]) && take(&c, ',') && price(&c, &f[1]) && take(&c, ',') && integer(&c, &f[2]) &&
             take(&c, ',') && integer(&c, &f[3]) && c.p == c.e;
    }
    if (!ok) return 0;

    long long hour_ms;
    int found = hour_start(self, date, hh, &hour_ms);
    if (found <= 0) return found;
    long long ts = hour_ms + mm * 60000LL + ss * 1000LL + millis;
    if (self->avro != NULL && self->avro != Py_None) return format_avro(self, f, ts, ingestion, line_no);
    long long ingestion_ms = ingestion;

    char *w = self->out;
    w = put(w, PyBytes_AS_STRING(self->head), PyBytes_GET_SIZE(self->head));
    w = PUT_LIT(w, ",\"exchange_timestamp\":");
    w = put_ll(w, ts);
    if (self->kind == KIND_TRADE) {
        w = PUT_LIT(w, ",\"price\":\"");
        w = put(w, f[0].s, f[0].n);
        w = PUT_LIT(w, "\",\"volume\":");
        w = put_int(w, f[1]);
        w = PUT_LIT(w, ",\"qualifiers\":");
        w = put_int(w, f[2]);
        w = PUT_LIT(w, ",\"venue\":");
        w = put_text(w, f[3]);
        w = PUT_LIT(w, ",\"buyer_id\":");
        w = put_text(w, f[4]);
    } else {
        w = PUT_LIT(w, ",\"bid_price\":\"");
        w = put(w, f[0].s, f[0].n);
        w = PUT_LIT(w, "\",\"ask_price\":\"");
        w = put(w, f[1].s, f[1].n);
        w = PUT_LIT(w, "\",\"bid_volume\":");
        w = put_int(w, f[2]);
        w = PUT_LIT(w, ",\"ask_volume\":");
        w = put_int(w, f[3]);
    }
    w = PUT_LIT(w, ",\"ingestion_timestamp\":");
    w = put_ll(w, ingestion_ms);
    *w++ = '}';
    return w - self->out;
}

/* [("job_id", ...), ("source", b"<path>:<line>")] */
static PyObject *message_headers(FastRows *self, long long line_no) {
    char buf[32];
    char *end = put_ll(buf, line_no);
    Py_ssize_t plen = PyBytes_GET_SIZE(self->prefix);
    PyObject *source = PyBytes_FromStringAndSize(NULL, plen + (end - buf));
    if (source == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(source), PyBytes_AS_STRING(self->prefix), (size_t)plen);
    memcpy(PyBytes_AS_STRING(source) + plen, buf, (size_t)(end - buf));
    PyObject *pair = PyTuple_New(2);
    PyObject *list = PyList_New(2);
    if (pair == NULL || list == NULL) {
        Py_DECREF(source);
        Py_XDECREF(pair);
        Py_XDECREF(list);
        return NULL;
    }
    Py_INCREF(self->source);
    PyTuple_SET_ITEM(pair, 0, self->source);
    PyTuple_SET_ITEM(pair, 1, source);
    Py_INCREF(self->job_header);
    PyList_SET_ITEM(list, 0, self->job_header);
    PyList_SET_ITEM(list, 1, pair);
    return list;
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

PyDoc_STRVAR(parse_doc,
             "parse(data, pos, line_no, max_lines, ingestion) -> (values, headers, deferred, pos, line_no)\n\n"
             "Up to max_lines lines of data from byte pos (line number line_no). values[i] and headers[i] are\n"
             "None for each deferred line, listed in deferred as (i, line_no, raw line without '\\n').");

static PyObject *FastRows_parse(FastRows *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, max_lines;
    long long line_no, ingestion;
    if (!PyArg_ParseTuple(args, "y*nLnL", &view, &pos, &line_no, &max_lines, &ingestion)) return NULL;
    PyObject *values = PyList_New(0), *headers = PyList_New(0), *deferred = PyList_New(0);
    if (values == NULL || headers == NULL || deferred == NULL) goto fail;
    if (pos < 0 || pos > view.len) {
        PyErr_SetString(PyExc_ValueError, "pos is outside data");
        goto fail;
    }
    const char *buf = view.buf;
    for (Py_ssize_t n = 0; n < max_lines && pos < view.len; n++, line_no++) {
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', (size_t)(view.len - pos));
        const char *e = nl ? nl : buf + view.len;
        pos = (e - buf) + (nl ? 1 : 0);
        Py_ssize_t len = format_row(self, s, e, ingestion, line_no);
        if (len < 0) goto fail;
        if (len > 0) {
            if (append_new(values, PyBytes_FromStringAndSize(self->out, len)) < 0) goto fail;
            if (append_new(headers, message_headers(self, line_no)) < 0) goto fail;
            continue;
        }
        PyObject *entry = Py_BuildValue("(nLy#)", PyList_GET_SIZE(values), line_no, s, (Py_ssize_t)(e - s));
        if (append_new(deferred, entry) < 0 || PyList_Append(values, Py_None) < 0 ||
            PyList_Append(headers, Py_None) < 0)
            goto fail;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNNnL)", values, headers, deferred, pos, line_no);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(values);
    Py_XDECREF(headers);
    Py_XDECREF(deferred);
    return NULL;
}

/* ---- Queueing messages on a confluent-kafka Producer's own librdkafka handle ----------------------
 *
 * confluent-kafka's produce() costs about a microsecond a message: keyword parsing, converting the
 * headers list, and a per-message state it allocates even when no callback is wanted. send() queues a
 * batch of (value, headers) with one rd_kafka_produceva() call each, on the very handle -- and so the
 * very transaction -- the Producer object holds. No delivery callback is attached (the message opaque
 * is NULL, which confluent-kafka's delivery callback skips): a transactional producer's commit fails by
 * itself if any message of the transaction failed delivery (librdkafka: txn_dr_fails).
 *
 * Nothing here links against librdkafka: bind(path) looks its functions up in the copy confluent-kafka
 * already loaded (RTLD_NOLOAD), and the few declarations below are librdkafka's stable public ABI
 * (rdkafka.h: rd_kafka_vtype_t, rd_kafka_vu_t). The handle is the first field of confluent-kafka's
 * Handle struct, right after PyObject_HEAD (HANDLE_OFFSET); nothing may read it there before
 * verify_handle() confirmed that layout, which k2jobs.kafka.compiled_send does once per process. */
typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_error_s rd_kafka_error_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
enum { VT_END, VT_TOPIC, VT_RKT, VT_PARTITION, VT_VALUE, VT_KEY, VT_OPAQUE, VT_MSGFLAGS, VT_TIMESTAMP, VT_HEADER };
typedef struct {
    int vtype;
    union {
        const char *cstr;
        rd_kafka_topic_t *rkt;
        int i;
        struct {
            const void *ptr;
            size_t size;
        } mem;
        struct {
            const char *name;
            const void *val;
            ssize_t size;
        } header;
        char _pad[64];
    } u;
} rk_vu;
#define MSG_F_COPY 0x2
#define ERR_QUEUE_FULL (-184)
#define MAX_HEADERS 8

static rd_kafka_error_t *(*rk_produceva)(rd_kafka_t *, const rk_vu *, size_t);
static int (*rk_error_code)(const rd_kafka_error_t *);
static const char *(*rk_error_string)(const rd_kafka_error_t *);
static int (*rk_error_is_fatal)(const rd_kafka_error_t *);
static void (*rk_error_destroy)(rd_kafka_error_t *);
static const char *(*rk_name)(const rd_kafka_t *);
static rd_kafka_topic_t *(*rk_topic_new)(rd_kafka_t *, const char *, void *);
static void (*rk_topic_destroy)(rd_kafka_topic_t *);

/* The first four entries of a message's rd_kafka_produceva() arguments: topic, key, copy flag, and the value's
 * type (its bytes are set per message). The topic goes as a handle: given a topic *name*, librdkafka looks it up
 * under its handle's write lock for every message (rd_kafka_topic_new0 in rd_kafka_produceva). */
static void message_vu(rk_vu *vu, rd_kafka_topic_t *rkt, const Py_buffer *key) {
    vu[0].vtype = VT_RKT;
    vu[0].u.rkt = rkt;
    vu[1].vtype = VT_KEY;
    vu[1].u.mem.ptr = key->buf;
    vu[1].u.mem.size = (size_t)key->len;
    vu[2].vtype = VT_MSGFLAGS;
    vu[2].u.i = MSG_F_COPY;
    vu[3].vtype = VT_VALUE;
}

PyDoc_STRVAR(bind_doc, "bind(path) -> bool: use the librdkafka already loaded from path (False if it is not loaded)");

static PyObject *fastrows_bind(PyObject *module, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) Py_RETURN_FALSE;
    void *f[8] = {dlsym(lib, "rd_kafka_produceva"),     dlsym(lib, "rd_kafka_error_code"),
                  dlsym(lib, "rd_kafka_error_string"),   dlsym(lib, "rd_kafka_error_is_fatal"),
                  dlsym(lib, "rd_kafka_error_destroy"),  dlsym(lib, "rd_kafka_name"),
                  dlsym(lib, "rd_kafka_topic_new"),      dlsym(lib, "rd_kafka_topic_destroy")};
    for (int i = 0; i < 8; i++)
        if (f[i] == NULL) Py_RETURN_FALSE;
    rk_produceva = (rd_kafka_error_t * (*)(rd_kafka_t *, const rk_vu *, size_t)) f[0];
    rk_error_code = (int (*)(const rd_kafka_error_t *))f[1];
    rk_error_string = (const char *(*)(const rd_kafka_error_t *))f[2];
    rk_error_is_fatal = (int (*)(const rd_kafka_error_t *))f[3];
    rk_error_destroy = (void (*)(rd_kafka_error_t *))f[4];
    rk_name = (const char *(*)(const rd_kafka_t *))f[5];
    rk_topic_new = (rd_kafka_topic_t * (*)(rd_kafka_t *, const char *, void *)) f[6];
    rk_topic_destroy = (void (*)(rd_kafka_topic_t *))f[7];
    Py_RETURN_TRUE;
}

#define HANDLE_OFFSET ((Py_ssize_t)sizeof(PyObject)) /* confluent-kafka's Handle: PyObject_HEAD, rd_kafka_t *rk */

/* The confluent_kafka.Producer type `obj` is an instance of (a Python subclass keeps its C layout), or NULL. */
static PyTypeObject *producer_type(PyObject *obj) {
    for (PyTypeObject *t = Py_TYPE(obj); t != NULL; t = t->tp_base)
        if (strcmp(t->tp_name, "cimpl.Producer") == 0) return t;
    return NULL;
}

/* The librdkafka handle of a confluent_kafka.Producer, or NULL with an exception set. */
static rd_kafka_t *producer_handle(PyObject *producer) {
    if (rk_produceva == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not found librdkafka");
        return NULL;
    }
    if (producer_type(producer) == NULL) {
        PyErr_SetString(PyExc_TypeError, "producer must be a confluent_kafka.Producer");
        return NULL;
    }
    rd_kafka_t *rk = *(rd_kafka_t **)((char *)producer + HANDLE_OFFSET);
    if (rk == NULL) PyErr_SetString(PyExc_RuntimeError, "the producer is closed");
    return rk;
}

/* A handle on `topic` for one send() call (released with rk_topic_destroy), or NULL with an exception set. */
static rd_kafka_topic_t *topic_handle(rd_kafka_t *rk, const char *topic) {
    rd_kafka_topic_t *rkt = rk_topic_new(rk, topic, NULL);
    if (rkt == NULL) PyErr_Format(PyExc_ValueError, "librdkafka refused the topic name %s", topic);
    return rkt;
}

#define NAME_MAX_BYTES 128 /* librdkafka's rk_name[128] */
enum { CHILD_NO_HANDLE = 3, CHILD_WRITE_FAILED = 4 };

/* In the forked child: read the pointer at `offset` of the Producer and write rd_kafka_name() of it to `out`.
 * Only memory reads and async-signal-safe calls: the child has none of the parent's other threads, so it must
 * take no lock (rd_kafka_name is `return rk->rk_name`, an address inside the handle). A wrong pointer kills it
 * with SIGSEGV/SIGBUS, quietly: no core dump, and not the parent's handlers (Python's faulthandler). */
static void verify_in_child(PyObject *producer, Py_ssize_t offset, int out) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) signal(faults[i], SIG_DFL);
    rd_kafka_t *rk = *(rd_kafka_t **)((char *)producer + offset);
    if (rk == NULL) _exit(CHILD_NO_HANDLE);
    const char *name = rk_name(rk);
    size_t n = strnlen(name, NAME_MAX_BYTES);
    _exit(write(out, name, n) == (ssize_t)n ? 0 : CHILD_WRITE_FAILED);
}

static long long monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

PyDoc_STRVAR(verify_handle_doc,
             "verify_handle(producer, offset, timeout_s) -> bytes\n\n"
             "rd_kafka_name() of the pointer at byte `offset` of the Producer object, read in a forked child so\n"
             "that a pointer that is not a librdkafka handle kills the child, not this process. Raises\n"
             "RuntimeError naming why when the child does not answer (killed by a signal, timed out, ...).");

static PyObject *fastrows_verify_handle(PyObject *module, PyObject *args) {
    PyObject *producer;
    Py_ssize_t offset;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "Ond", &producer, &offset, &timeout_s)) return NULL;
    if (rk_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not found librdkafka");
        return NULL;
    }
    PyTypeObject *type = producer_type(producer);
    if (type == NULL) {
        PyErr_Format(PyExc_TypeError, "type %s is not a confluent_kafka.Producer", Py_TYPE(producer)->tp_name);
        return NULL;
    }
    /* The slot itself must lie inside the object: only what it points to is unverified. */
    if (offset < 0 || offset % (Py_ssize_t)sizeof(void *) != 0 ||
        offset + (Py_ssize_t)sizeof(void *) > type->tp_basicsize) {
        PyErr_Format(PyExc_RuntimeError, "offset %zd is not a pointer inside a %zd-byte %s", offset,
                     type->tp_basicsize, type->tp_name);
        return NULL;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    pid_t pid = fork(); /* with the GIL held: no other Python thread forks while the write end is open */
    if (pid == 0) verify_in_child(producer, offset, fds[1]);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    char name[NAME_MAX_BYTES + 1];
    size_t got = 0;
    int eof = 0, status = 0;
    pid_t reaped;
    Py_BEGIN_ALLOW_THREADS
    long long deadline = monotonic_ms() + (long long)(timeout_s * 1000);
    while (!eof && got < sizeof(name)) {
        long long left = deadline - monotonic_ms();
        if (left <= 0) break;
        struct pollfd ready = {.fd = fds[0], .events = POLLIN};
        int r = poll(&ready, 1, (int)(left > INT32_MAX ? INT32_MAX : left));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        ssize_t n = read(fds[0], name + got, sizeof(name) - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) eof = 1;
        else got += (size_t)n;
    }
    /* Not at end of file: the child still holds the pipe open, so it is alive (not a reused pid). */
    if (!eof) kill(pid, SIGKILL);
    do reaped = waitpid(pid, &status, 0);
    while (reaped < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    close(fds[0]);
    /* The pipe is the answer; the exit status (unknown when SIGCHLD is ignored) only says why there is none. */
    if (eof && got > 0 && got <= NAME_MAX_BYTES) return PyBytes_FromStringAndSize(name, (Py_ssize_t)got);
    if (!eof)
        PyErr_Format(PyExc_RuntimeError, "the child reading the handle gave no answer within %.1f s", timeout_s);
    else if (reaped == pid && WIFSIGNALED(status))
        PyErr_Format(PyExc_RuntimeError, "reading the handle killed the child that did it (signal %d)",
                     WTERMSIG(status));
    else if (reaped == pid && WIFEXITED(status) && WEXITSTATUS(status) == CHILD_NO_HANDLE)
        PyErr_SetString(PyExc_RuntimeError, "the pointer where the handle should be is NULL");
    else
        PyErr_SetString(PyExc_RuntimeError, "the child reading the handle ended without an answer");
    return NULL;
}

/* One (name, value) header pair into vu; value bytes or None. 0 on success, -1 with TypeError. */
static int header_vu(PyObject *pair, rk_vu *vu) {
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
        PyErr_SetString(PyExc_TypeError, "a header must be a (str, bytes | None) tuple");
        return -1;
    }
    PyObject *value = PyTuple_GET_ITEM(pair, 1);
    vu->vtype = VT_HEADER;
    vu->u.header.name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(pair, 0));
    if (vu->u.header.name == NULL) return -1;
    if (value == Py_None) {
        vu->u.header.val = NULL;
        vu->u.header.size = -1;
    } else if (PyBytes_Check(value)) {
        vu->u.header.val = PyBytes_AS_STRING(value);
        vu->u.header.size = PyBytes_GET_SIZE(value);
    } else {
        PyErr_SetString(PyExc_TypeError, "a header value must be bytes or None");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(send_doc,
             "send(producer, topic, key, values, headers, start) -> (next, error_code, error, fatal)\n\n"
             "Queue values[start:] (each with headers[i], a list of (str, bytes | None)) to topic with key.\n"
             "Stops at the first message librdkafka refuses: next is its index and error_code librdkafka's\n"
             "code (-184: the queue is full, poll and call again); error_code 0 when all were queued.");

static PyObject *fastrows_send(PyObject *module, PyObject *args) {
    PyObject *producer, *values, *headers, *result = NULL;
    const char *topic;
    Py_buffer key;
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "Osy*O!O!n", &producer, &topic, &key, &PyList_Type, &values, &PyList_Type, &headers,
                          &i))
        return NULL;
    rd_kafka_topic_t *rkt = NULL;
    rd_kafka_t *rk = producer_handle(producer);
    if (rk == NULL) goto done;
    if (PyList_GET_SIZE(values) != PyList_GET_SIZE(headers)) {
        PyErr_SetString(PyExc_ValueError, "values and headers differ in length");
        goto done;
    }
    rkt = topic_handle(rk, topic);
    if (rkt == NULL) goto done;
    rk_vu vu[4 + MAX_HEADERS];
    memset(vu, 0, sizeof(vu));
    message_vu(vu, rkt, &key);
    for (; i < PyList_GET_SIZE(values); i++) {
        PyObject *value = PyList_GET_ITEM(values, i), *list = PyList_GET_ITEM(headers, i);
        if (!PyBytes_Check(value) || !PyList_Check(list) || PyList_GET_SIZE(list) > MAX_HEADERS) {
            PyErr_SetString(PyExc_TypeError, "values must be bytes and headers lists of at most 8 pairs");
            goto done;
        }
        vu[3].u.mem.ptr = PyBytes_AS_STRING(value);
        vu[3].u.mem.size = (size_t)PyBytes_GET_SIZE(value);
        Py_ssize_t n = PyList_GET_SIZE(list);
        for (Py_ssize_t h = 0; h < n; h++)
            if (header_vu(PyList_GET_ITEM(list, h), &vu[4 + h]) < 0) goto done;
        rd_kafka_error_t *error = rk_produceva(rk, vu, (size_t)(4 + n));
        if (error != NULL) {
            int code = rk_error_code(error), fatal = rk_error_is_fatal(error);
            result = Py_BuildValue("(nisi)", i, code, rk_error_string(error), fatal);
            rk_error_destroy(error);
            goto done;
        }
    }
    result = Py_BuildValue("(nisi)", i, 0, "", 0);
done:
    if (rkt != NULL) rk_topic_destroy(rkt);
    PyBuffer_Release(&key);
    return result;
}


#define SENT_ALL 0
#define STOPPED_AT_DEFERRED 1

PyDoc_STRVAR(fr_send_doc,
             "send(producer, topic, key, data, pos, line_no, max_lines, ingestion)\n"
             "    -> (queued, pos, line_no, code, error, fatal)\n\n"
             "parse() and queue in one: up to max_lines lines of data from byte pos become messages queued on the\n"
             "producer (headers job_id and source, as parse() gives them) without becoming Python objects.\n"
             "Stops before a line parse() would defer (code 1: pos and line_no are that line's), or before a\n"
             "line librdkafka refuses (code: librdkafka's, -184 when the queue is full); code 0 otherwise.");

static PyObject *FastRows_send(FastRows *self, PyObject *args) {
    PyObject *producer, *result = NULL;
    const char *topic;
    Py_buffer key, view;
    Py_ssize_t pos, max_lines, queued = 0;
    long long line_no, ingestion;
    if (!PyArg_ParseTuple(args, "Osy*y*nLnL", &producer, &topic, &key, &view, &pos, &line_no, &max_lines,
                          &ingestion))
        return NULL;
    char *source = NULL;
    rd_kafka_topic_t *rkt = NULL;
    rd_kafka_t *rk = producer_handle(producer);
    if (rk == NULL) goto done;
    if (pos < 0 || pos > view.len) {
        PyErr_SetString(PyExc_ValueError, "pos is outside data");
        goto done;
    }
    PyObject *job_value = PyTuple_GET_ITEM(self->job_header, 1);
    const char *job_name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(self->job_header, 0));
    if (job_name == NULL) goto done;
    if (!PyBytes_Check(job_value)) {
        PyErr_SetString(PyExc_TypeError, "the job_id header value must be bytes");
        goto done;
    }
    Py_ssize_t plen = PyBytes_GET_SIZE(self->prefix);
    source = PyMem_Malloc((size_t)plen + 32);
    if (source == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(source, PyBytes_AS_STRING(self->prefix), (size_t)plen);
    rkt = topic_handle(rk, topic);
    if (rkt == NULL) goto done;
    rk_vu vu[6];
    memset(vu, 0, sizeof(vu));
    message_vu(vu, rkt, &key);
    vu[3].u.mem.ptr = self->out;
    vu[4].vtype = VT_HEADER;
    vu[4].u.header.name = job_name;
    vu[4].u.header.val = PyBytes_AS_STRING(job_value);
    vu[4].u.header.size = PyBytes_GET_SIZE(job_value);
    vu[5].vtype = VT_HEADER;
    vu[5].u.header.name = "source";
    vu[5].u.header.val = source;
    const char *buf = view.buf;
    int code = SENT_ALL, fatal = 0;
    PyObject *reason = NULL;
    for (Py_ssize_t n = 0; n < max_lines && pos < view.len; n++) {
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', (size_t)(view.len - pos));
        const char *e = nl ? nl : buf + view.len;
        Py_ssize_t len = format_row(self, s, e, ingestion, line_no);
        if (len < 0) goto done;
        if (len == 0) {
            code = STOPPED_AT_DEFERRED;
            break;
        }
        vu[3].u.mem.size = (size_t)len;
        vu[5].u.header.size = put_ll(source + plen, line_no) - source;
        rd_kafka_error_t *error = rk_produceva(rk, vu, 6);
        if (error != NULL) {
            code = rk_error_code(error);
            fatal = rk_error_is_fatal(error);
            reason = PyUnicode_FromString(rk_error_string(error));
            rk_error_destroy(error);
            if (reason == NULL) goto done;
            break;
        }
        queued++;
        line_no++;
        pos = (e - buf) + (nl ? 1 : 0);
    }
    result = Py_BuildValue("(nnLiNi)", queued, pos, line_no, code, reason ? reason : PyUnicode_FromString(""), fatal);
done:
    if (rkt != NULL) rk_topic_destroy(rkt);
    PyMem_Free(source);
    PyBuffer_Release(&key);
    PyBuffer_Release(&view);
    return result;
}

static int FastRows_init(FastRows *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"kind", "head", "hour_ms", "job_header", "prefix", "avro", NULL};
    int kind;
    PyObject *head, *hour_ms, *job_header, *prefix, *avro = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iSOOS|O", kwlist, &kind, &head, &hour_ms, &job_header, &prefix,
                                     &avro))
        return -1;
    if (kind != KIND_TRADE && kind != KIND_QUOTE) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (trade) or 1 (quote)");
        return -1;
    }
    if (!PyCallable_Check(hour_ms)) {
        PyErr_SetString(PyExc_TypeError, "hour_ms must be callable");
        return -1;
    }
    if (!PyTuple_Check(job_header) || PyTuple_GET_SIZE(job_header) != 2) {
        PyErr_SetString(PyExc_TypeError, "job_header must be a (name, value) tuple");
        return -1;
    }
    Py_ssize_t room = PyBytes_GET_SIZE(head) + 2 * MAX_LINE + 256;
    if (avro != Py_None) {
        if (!PyTuple_Check(avro) || PyTuple_GET_SIZE(avro) != 4) {
            PyErr_SetString(PyExc_TypeError, "avro must be None or a tuple of 4 bytes");
            return -1;
        }
        for (Py_ssize_t i = 0; i < 4; i++) {
            if (!PyBytes_Check(PyTuple_GET_ITEM(avro, i))) {
                PyErr_SetString(PyExc_TypeError, "avro must be None or a tuple of 4 bytes");
                return -1;
            }
            room += PyBytes_GET_SIZE(PyTuple_GET_ITEM(avro, i));
        }
        if (PyBytes_GET_SIZE(prefix) > 500) {
            PyErr_SetString(PyExc_ValueError, "prefix is too long for an Avro message id");
            return -1;
        }
        room += 2 * (PyBytes_GET_SIZE(prefix) + 64) + 128; /* two ids, numbers, map keys */
    }
    char *out = PyMem_Malloc((size_t)room);
    if (out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(self->out);
    self->out = out;
    self->kind = kind;
    Py_INCREF(head);
    Py_XSETREF(self->head, head);
    Py_INCREF(hour_ms);
    Py_XSETREF(self->hour_ms, hour_ms);
    Py_INCREF(job_header);
    Py_XSETREF(self->job_header, job_header);
    Py_INCREF(prefix);
    Py_XSETREF(self->prefix, prefix);
    Py_INCREF(avro);
    Py_XSETREF(self->avro, avro);
    Py_XSETREF(self->source, PyUnicode_InternFromString("source"));
    if (self->source == NULL) return -1;
    self->cached_hour = -1;
    return 0;
}

static void FastRows_dealloc(FastRows *self) {
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->head);
    Py_CLEAR(self->hour_ms);
    Py_CLEAR(self->job_header);
    Py_CLEAR(self->source);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->avro);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FastRows_traverse(FastRows *self, visitproc visit, void *arg) {
    Py_VISIT(self->hour_ms);
    Py_VISIT(self->job_header);
    return 0;
}

static int FastRows_clear(FastRows *self) {
    Py_CLEAR(self->hour_ms);
    Py_CLEAR(self->job_header);
    return 0;
}

static PyMethodDef FastRows_methods[] = {
    {"parse", (PyCFunction)FastRows_parse, METH_VARARGS, parse_doc},
    {"send", (PyCFunction)FastRows_send, METH_VARARGS, fr_send_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastRowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "k2jobs._fastrows.FastRows",
    .tp_doc = PyDoc_STR("FastRows(kind, head, hour_ms, job_header, prefix, avro=None): a file's rows to message values"),
    .tp_basicsize = sizeof(FastRows),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastRows_init,
    .tp_dealloc = (destructor)FastRows_dealloc,
    .tp_traverse = (traverseproc)FastRows_traverse,
    .tp_clear = (inquiry)FastRows_clear,
    .tp_methods = FastRows_methods,
};


/* -- planning: lines of a buffer (k2jobs/planning.py) ------------------------------------------ */

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

PyDoc_STRVAR(scan_lines_doc,
"scan_lines(data, pos, lines) -> (end, endings, blank): from `pos`, the offset just past the `lines`-th line\n"
"ending (or past the last one in `data` if fewer), how many line endings that is, and how many of those lines\n"
"are blank (nothing but ASCII whitespace, as bytes.strip() sees it). Releases the GIL while it scans.");

static PyObject *fastrows_scan_lines(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, lines;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &pos, &lines)) return NULL;
    if (pos < 0 || pos > view.len || lines < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan_lines: pos outside the data, or lines < 0");
        return NULL;
    }
    const char *buf = (const char *)view.buf;
    Py_ssize_t len = view.len, end = pos, endings = 0, blank = 0;
    Py_BEGIN_ALLOW_THREADS
    const char *p = buf + pos, *stop = buf + len;
    while (endings < lines && p < stop) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        if (nl == NULL) break;
        if (is_space((unsigned char)*p)) {  /* most lines start with a digit: only these can be blank */
            const char *q = p;
            while (q < nl && is_space((unsigned char)*q)) q++;
            if (q == nl) blank++;
        }
        endings++;
        p = nl + 1;
    }
    end = p - buf;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("nnn", end, endings, blank);
}

static PyMethodDef module_methods[] = {
    {"bind", fastrows_bind, METH_VARARGS, bind_doc},
    {"verify_handle", fastrows_verify_handle, METH_VARARGS, verify_handle_doc},
    {"send", fastrows_send, METH_VARARGS, send_doc},
    {"scan_lines", fastrows_scan_lines, METH_VARARGS, scan_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastrows_module = {
    PyModuleDef_HEAD_INIT, .m_name = "k2jobs._fastrows",
    .m_doc = "Compiled fast path for k2jobs' common rows; see k2jobs/batches.py.", .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastrows(void) {
    if (PyType_Ready(&FastRowsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastrows_module);
    if (m == NULL) return NULL;
    Py_INCREF(&FastRowsType);
    if (PyModule_AddObject(m, "FastRows", (PyObject *)&FastRowsType) < 0) {
        Py_DECREF(&FastRowsType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "HANDLE_OFFSET", (long)HANDLE_OFFSET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
