/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_render.c -- a store read rendered as one transport's frames (API:
 * comet_render.h).  The frames themselves are comet_frame.c's; this file
 * decides which frames a read becomes and which id each one carries.
 */

#include <string.h>

#include "comet_frame.h"
#include "comet_render.h"

apr_size_t comet_render_position_id(char *buf, apr_uint32_t epoch,
                                 const apr_uint64_t *seqs, apr_size_t nchan)
{
    if (nchan == 1) {
        comet_msgid_t id;

        id.epoch = epoch;
        id.seq = seqs[0];
        return comet_msgid_format(buf, &id);
    }
    return comet_msgid_format_compound(buf, epoch, seqs, nchan);
}

apr_status_t comet_render_msg(comet_buf_t *buf, int transport, int chunked,
                              apr_uint32_t epoch, const char *const *ids,
                              const apr_uint64_t *seqs, apr_size_t nchan,
                              apr_size_t ci, const comet_msg_t *msg,
                              apr_pool_t *p)
{
    char idbuf[COMET_MSGID_COMPOUND_MAXLEN(1024)];
    apr_size_t idlen, mark = 0, before = buf->len;
    apr_status_t rv;

    idlen = comet_render_position_id(idbuf, epoch, seqs, nchan);
    if (chunked && (rv = comet_frame_chunk_begin(buf, &mark))
        != APR_SUCCESS) {
        return rv;
    }
    if (transport == COMET_T_SSE) {
        apr_size_t elen;
        const char *ev = comet_frame_event_name(p, nchan > 1, ids[ci],
                                                strlen(ids[ci]), msg->event,
                                                msg->event_len, &elen);

        rv = comet_frame_sse(buf, idbuf, idlen, ev, elen, msg->data,
                             msg->data_len);
    }
    else {
        comet_frame_msg_t fm;
        char one[COMET_MSGID_MAXLEN];

        memset(&fm, 0, sizeof(fm));
        fm.channel = ids[ci];
        fm.channel_len = strlen(ids[ci]);
        if (nchan > 1) {
            fm.id = idbuf;
            fm.id_len = idlen;
        }
        else {
            fm.id_len = comet_msgid_format(one, &msg->id);
            fm.id = one;
        }
        fm.event = msg->event;
        fm.event_len = msg->event_len;
        fm.data = msg->data;
        fm.data_len = msg->data_len;
        fm.time = msg->published;
        rv = comet_frame_ndjson(buf, &fm);
    }
    if (rv == APR_SUCCESS && chunked) {
        rv = comet_frame_chunk_end(buf, mark);
    }
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(buf, before);
    }
    return rv;
}

apr_status_t comet_render_notice(comet_buf_t *buf, int transport,
                                 int chunked, int deleted,
                                 const char *channel)
{
    apr_size_t mark = 0, before = buf->len, len = strlen(channel);
    apr_status_t rv;

    if (chunked && (rv = comet_frame_chunk_begin(buf, &mark))
        != APR_SUCCESS) {
        return rv;
    }
    if (transport == COMET_T_SSE) {
        rv = deleted ? comet_frame_sse_deleted(buf, channel, len)
                     : comet_frame_sse_missed(buf, channel, len);
    }
    else {
        rv = deleted ? comet_frame_ndjson_deleted(buf, channel, len)
                     : comet_frame_ndjson_missed(buf, channel, len);
    }
    if (rv == APR_SUCCESS && chunked) {
        rv = comet_frame_chunk_end(buf, mark);
    }
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(buf, before);
    }
    return rv;
}

apr_status_t comet_render_stream(comet_buf_t *buf, int transport,
                                 int chunked, apr_uint32_t epoch,
                                 const char *const *ids,
                                 apr_uint64_t *seqs, apr_size_t nchan,
                                 apr_size_t ci, const comet_read_t *rd,
                                 apr_pool_t *p)
{
    apr_status_t rv = APR_SUCCESS;

    if (!rd) {
        return APR_SUCCESS;
    }
    if (rd->missed) {
        rv = comet_render_notice(buf, transport, chunked, 0, ids[ci]);
    }
    for (int i = 0; rv == APR_SUCCESS && i < rd->msgs->nelts; i++) {
        const comet_msg_t *msg = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
        apr_uint64_t prev = seqs[ci];

        if (msg->id.seq <= seqs[ci]) {
            continue;
        }
        seqs[ci] = msg->id.seq;
        rv = comet_render_msg(buf, transport, chunked, epoch, ids, seqs,
                              nchan, ci, msg, p);
        if (rv != APR_SUCCESS) {
            seqs[ci] = prev;
        }
    }
    if (rv == APR_SUCCESS && rd->deleted) {
        rv = comet_render_notice(buf, transport, chunked, 1, ids[ci]);
    }
    return rv;
}

apr_status_t comet_render_poll(comet_buf_t *buf, apr_uint32_t epoch,
                               const char *const *ids,
                               apr_uint64_t *seqs, apr_size_t nchan,
                               const comet_read_t *const *reads,
                               int missed)
{
    char idbuf[COMET_MSGID_COMPOUND_MAXLEN(1024)];
    comet_frame_poll_t poll;
    apr_size_t idlen;
    apr_status_t rv;

    /* The document's id comes first: the position after all it holds. */
    for (apr_size_t c = 0; c < nchan; c++) {
        const comet_read_t *rd = reads[c];

        for (int i = 0; rd && i < rd->msgs->nelts; i++) {
            const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);

            if (m->id.seq > seqs[c]) {
                seqs[c] = m->id.seq;
            }
        }
    }
    idlen = comet_render_position_id(idbuf, epoch, seqs, nchan);
    if ((rv = comet_frame_poll_begin(&poll, buf, idbuf, idlen, missed))
        != APR_SUCCESS) {
        return rv;
    }
    for (apr_size_t c = 0; c < nchan; c++) {
        const comet_read_t *rd = reads[c];

        for (int i = 0; rd && i < rd->msgs->nelts; i++) {
            const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
            comet_frame_msg_t fm;
            char one[COMET_MSGID_MAXLEN];

            memset(&fm, 0, sizeof(fm));
            fm.channel = ids[c];
            fm.channel_len = strlen(ids[c]);
            fm.id_len = comet_msgid_format(one, &m->id);
            fm.id = one;
            fm.event = m->event;
            fm.event_len = m->event_len;
            fm.data = m->data;
            fm.data_len = m->data_len;
            fm.time = m->published;
            if ((rv = comet_frame_poll_add(&poll, &fm)) != APR_SUCCESS) {
                return rv;
            }
        }
    }
    return comet_frame_poll_end(&poll);
}
