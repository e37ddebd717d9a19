#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t n, i;
    char *err;
    size_t err_len;
    int depth;
} parser;

static jvalue *parse_value(parser *p);

static void fail(parser *p, const char *msg) {
    if (p->err && p->err[0] == '\0') {
        snprintf(p->err, p->err_len, "%s at byte %zu", msg, p->i);
    }
}

static void skip_ws(parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r')) {
        p->i++;
    }
}

static jvalue *new_value(jtype t) {
    jvalue *v = calloc(1, sizeof *v);
    if (v) {
        v->type = t;
    }
    return v;
}

static int push(jvalue *v, jvalue *item, char *key) {
    jvalue **items = realloc(v->items, (v->count + 1) * sizeof *items);
    if (!items) {
        return -1;
    }
    v->items = items;
    if (v->type == J_OBJECT) {
        char **keys = realloc(v->keys, (v->count + 1) * sizeof *keys);
        if (!keys) {
            return -1;
        }
        v->keys = keys;
        v->keys[v->count] = key;
    }
    v->items[v->count++] = item;
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void put_utf8(char *out, size_t *o, unsigned cp) {
    if (cp < 0x80) {
        out[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*o)++] = (char)(0xC0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xE0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*o)++] = (char)(0xF0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int read_u4(parser *p, unsigned *cp) {
    if (p->n - p->i < 4) return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->i + k]);
        if (h < 0) return -1;
        v = (v << 4) | (unsigned)h;
    }
    p->i += 4;
    *cp = v;
    return 0;
}

/* After the opening quote. */
static char *parse_string(parser *p, size_t *out_len) {
    size_t start = p->i, cap = 16;
    char *out;
    size_t o = 0;
    /* the decoded text is never longer than the raw text */
    while (p->i < p->n && p->s[p->i] != '"') {
        if (p->s[p->i] == '\\') p->i++;
        p->i++;
    }
    if (p->i >= p->n) {
        fail(p, "unterminated string");
        return NULL;
    }
    cap = p->i - start + 1;
    p->i = start;
    out = malloc(cap);
    if (!out) return NULL;
    while (p->s[p->i] != '"') {
        char c = p->s[p->i++];
        if ((unsigned char)c < 0x20) {
            fail(p, "control character in string");
            free(out);
            return NULL;
        }
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        c = p->s[p->i++];
        switch (c) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (read_u4(p, &cp) != 0) {
                fail(p, "bad \\u escape");
                free(out);
                return NULL;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->n - p->i >= 6 && p->s[p->i] == '\\' &&
                p->s[p->i + 1] == 'u') {
                p->i += 2;
                if (read_u4(p, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                    fail(p, "bad surrogate pair");
                    free(out);
                    return NULL;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, &o, cp);
            break;
        }
        default:
            fail(p, "bad escape");
            free(out);
            return NULL;
        }
    }
    p->i++; /* closing quote */
    out[o] = '\0';
    *out_len = o;
    return out;
}

static jvalue *parse_value(parser *p) {
    skip_ws(p);
    if (p->i >= p->n) {
        fail(p, "unexpected end");
        return NULL;
    }
    if (++p->depth > 64) {
        fail(p, "too deep");
        return NULL;
    }
    jvalue *v = NULL;
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        int obj = c == '{';
        v = new_value(obj ? J_OBJECT : J_ARRAY);
        if (!v) return NULL;
        p->i++;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
            p->i++;
            p->depth--;
            return v;
        }
        for (;;) {
            char *key = NULL;
            size_t klen;
            skip_ws(p);
            if (obj) {
                if (p->i >= p->n || p->s[p->i] != '"') {
                    fail(p, "expected key");
                    json_free(v);
                    return NULL;
                }
                p->i++;
                key = parse_string(p, &klen);
                skip_ws(p);
                if (!key || p->i >= p->n || p->s[p->i] != ':') {
                    fail(p, "expected ':'");
                    free(key);
                    json_free(v);
                    return NULL;
                }
                p->i++;
            }
            jvalue *item = parse_value(p);
            if (!item || push(v, item, key) != 0) {
                free(key);
                json_free(item);
                json_free(v);
                return NULL;
            }
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
                p->i++;
                break;
            }
            fail(p, "expected ',' or close");
            json_free(v);
            return NULL;
        }
    } else if (c == '"') {
        p->i++;
        v = new_value(J_STRING);
        if (!v) return NULL;
        v->str = parse_string(p, &v->str_len);
        if (!v->str) {
            free(v);
            return NULL;
        }
    } else if (p->n - p->i >= 4 && memcmp(p->s + p->i, "null", 4) == 0) {
        v = new_value(J_NULL);
        p->i += 4;
    } else if (p->n - p->i >= 4 && memcmp(p->s + p->i, "true", 4) == 0) {
        v = new_value(J_BOOL);
        if (v) v->boolean = 1;
        p->i += 4;
    } else if (p->n - p->i >= 5 && memcmp(p->s + p->i, "false", 5) == 0) {
        v = new_value(J_BOOL);
        p->i += 5;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        size_t start = p->i;
        while (p->i < p->n && strchr("+-0123456789.eE", p->s[p->i])) p->i++;
        v = new_value(J_NUMBER);
        if (!v) return NULL;
        v->str_len = p->i - start;
        v->str = malloc(v->str_len + 1);
        if (!v->str) {
            free(v);
            return NULL;
        }
        memcpy(v->str, p->s + start, v->str_len);
        v->str[v->str_len] = '\0';
    } else {
        fail(p, "unexpected character");
        return NULL;
    }
    p->depth--;
    return v;
}

jvalue *json_parse(const char *text, size_t len, char *err, size_t err_len) {
    parser p = {text, len, 0, err, err_len, 0};
    if (err && err_len) err[0] = '\0';
    jvalue *v = parse_value(&p);
    skip_ws(&p);
    if (v && p.i != p.n) {
        fail(&p, "trailing data");
        json_free(v);
        return NULL;
    }
    return v;
}

jvalue *json_load_file(const char *path) {
    FILE *f = fopen(path, "rb");
    char err[128];
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    jvalue *v = json_parse(buf, n, err, sizeof err);
    if (!v) fprintf(stderr, "%s: %s\n", path, err);
    free(buf);
    return v;
}

void json_free(jvalue *v) {
    if (!v) return;
    for (size_t i = 0; i < v->count; i++) {
        json_free(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

jvalue *json_get(const jvalue *obj, const char *key) {
    if (!obj || obj->type != J_OBJECT) return NULL;
    for (size_t i = 0; i < obj->count; i++) {
        if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
    }
    return NULL;
}

jvalue *json_at(const jvalue *arr, size_t i) {
    if (!arr || (arr->type != J_ARRAY && arr->type != J_OBJECT) || i >= arr->count) return NULL;
    return arr->items[i];
}

const char *json_str(const jvalue *obj, const char *key) {
    jvalue *v = json_get(obj, key);
    return v && v->type == J_STRING ? v->str : NULL;
}

int64_t json_int(const jvalue *obj, const char *key) {
    jvalue *v = json_get(obj, key);
    return v && v->type == J_NUMBER ? (int64_t)strtod(v->str, NULL) : 0;
}

double json_num(const jvalue *obj, const char *key) {
    jvalue *v = json_get(obj, key);
    return v && v->type == J_NUMBER ? strtod(v->str, NULL) : 0.0;
}

uint8_t *hex_decode(const char *hex, size_t *len) {
    size_t n = strlen(hex);
    if (n % 2) return NULL;
    uint8_t *out = malloc(n / 2 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

uint8_t *json_hex(const jvalue *obj, const char *key, size_t *len) {
    const char *s = json_str(obj, key);
    return s ? hex_decode(s, len) : NULL;
}
