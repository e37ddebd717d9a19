/* A tiny JSON reader for the test programs: parses a whole document into a tree.
 * Not part of libqnet.  Strings are decoded (\uXXXX to UTF-8); numbers keep their text. */
#ifndef QNET_TEST_JSON_H
#define QNET_TEST_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } jtype;

typedef struct jvalue {
    jtype type;
    int boolean;
    char *str;              /* J_STRING: decoded text; J_NUMBER: the literal */
    size_t str_len;
    struct jvalue **items;  /* J_ARRAY / J_OBJECT values */
    char **keys;            /* J_OBJECT keys */
    size_t count;
} jvalue;

/* Parse `text`; NULL on a syntax error (message in err). */
jvalue *json_parse(const char *text, size_t len, char *err, size_t err_len);
jvalue *json_load_file(const char *path);
void json_free(jvalue *v);

/* Lookups; NULL when missing or of another type. */
jvalue *json_get(const jvalue *obj, const char *key);
jvalue *json_at(const jvalue *arr, size_t i);
const char *json_str(const jvalue *obj, const char *key);
/* Integer value of a number (truncates a fraction), 0 if missing. */
int64_t json_int(const jvalue *obj, const char *key);
double json_num(const jvalue *obj, const char *key);
/* Hex string field decoded into a fresh buffer (free it); NULL if missing or bad. */
uint8_t *json_hex(const jvalue *obj, const char *key, size_t *len);
uint8_t *hex_decode(const char *hex, size_t *len);

#endif
