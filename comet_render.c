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
#include "comet_ws.h"

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
    if (transport == COMET_T_WS) {
        chunked = 0;
        rv = comet_ws_frame_begin(buf, &mark);
    }
    else if (chunked) {
        rv = comet_frame_chunk_begin(buf, &mark);
    }
    else {
        rv = APR_SUCCESS;
    }
    if (rv != APR_SUCCESS) {
        return rv;
    }
    if (transport == COMET_T_SSE) {
        apr_size_t elen;
        const char *ev = comet_frame_event_name(p, nchan > 1, ids[ci],
                                                strlen(ids[ci]), msg->event,
                                                msg->event_len, &elen);

        rv = comet_frame_sse_from(buf, idbuf, idlen, ev, elen, msg->from,
                                  msg->from_len, msg->data, msg->data_len);
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
        fm.from = msg->from;
        fm.from_len = msg->from_len;
        fm.data = msg->data;
        fm.data_len = msg->data_len;
        fm.time = msg->published;
        rv = transport == COMET_T_WS ? comet_frame_json_msg(buf, &fm)
                                     : comet_frame_ndjson(buf, &fm);
    }
    if (rv == APR_SUCCESS && transport == COMET_T_WS) {
        rv = comet_ws_frame_end(buf, mark, COMET_WS_OP_TEXT);
    }
    else if (rv == APR_SUCCESS && chunked) {
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

    if (transport == COMET_T_WS) {
        chunked = 0;
        rv = comet_ws_frame_begin(buf, &mark);
    }
    else if (chunked) {
        rv = comet_frame_chunk_begin(buf, &mark);
    }
    else {
        rv = APR_SUCCESS;
    }
    if (rv != APR_SUCCESS) {
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
    if (rv == APR_SUCCESS && transport == COMET_T_WS) {
        /* The same object as the stream's line, without its newline. */
        buf->len--;
        rv = comet_ws_frame_end(buf, mark, COMET_WS_OP_TEXT);
    }
    else if (rv == APR_SUCCESS && chunked) {
        rv = comet_frame_chunk_end(buf, mark);
    }
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(buf, before);
    }
    return rv;
}

/* A read that missed messages and whose channel's newest is below the
 * reader's position: the channel's ids started anew (a channel shared
 * through Redis, when Redis lost its data).  The reader starts over just
 * before the read's first message (or at the newest when it brought none):
 * all of the read is due although its seqs are not above the old
 * position. */
static void restart_seq(const comet_read_t *rd, apr_uint64_t *seq)
{
    if (rd->missed && rd->newest.seq < *seq) {
        *seq = rd->msgs->nelts
               ? APR_ARRAY_IDX(rd->msgs, 0, comet_msg_t).id.seq - 1
               : rd->newest.seq;
    }
}

apr_status_t comet_render_stream(comet_buf_t *buf, int transport,
                                 int chunked, apr_uint32_t epoch,
                                 const char *const *ids,
                                 apr_uint64_t *seqs, apr_size_t nchan,
                                 apr_size_t ci, const comet_read_t *rd,
                                 apr_size_t limit, int *complete,
                                 apr_pool_t *p)
{
    apr_status_t rv = APR_SUCCESS;
    apr_size_t start = buf->len;
    int frames = 0, all = 1;

    if (complete) {
        *complete = 1;
    }
    if (!rd) {
        return APR_SUCCESS;
    }
    if (rd->missed) {
        rv = comet_render_notice(buf, transport, chunked, 0, ids[ci]);
        restart_seq(rd, &seqs[ci]);
    }
    for (int i = 0; rv == APR_SUCCESS && i < rd->msgs->nelts; i++) {
        const comet_msg_t *msg = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
        apr_uint64_t prev = seqs[ci];
        apr_size_t before = buf->len;

        if (msg->id.seq <= seqs[ci]) {
            continue;
        }
        seqs[ci] = msg->id.seq;
        rv = comet_render_msg(buf, transport, chunked, epoch, ids, seqs,
                              nchan, ci, msg, p);
        if (rv == APR_SUCCESS && limit && frames
            && buf->len - start > limit) {
            /* The rest waits for the caller's next turn. */
            comet_buf_truncate(buf, before);
            seqs[ci] = prev;
            all = 0;
            break;
        }
        if (rv != APR_SUCCESS) {
            seqs[ci] = prev;
            all = 0;
        }
        frames++;
    }
    if (rv == APR_SUCCESS && all && rd->deleted) {
        rv = comet_render_notice(buf, transport, chunked, 1, ids[ci]);
        all = rv == APR_SUCCESS;
    }
    if (complete) {
        *complete = all;
    }
    return rv;
}

/* One message of channel c as the long-poll document's JSON object. */
static void poll_msg(comet_frame_msg_t *fm, char *one, const char *channel,
                     const comet_msg_t *m)
{
    memset(fm, 0, sizeof(*fm));
    fm->channel = channel;
    fm->channel_len = strlen(channel);
    fm->id_len = comet_msgid_format(one, &m->id);
    fm->id = one;
    fm->event = m->event;
    fm->event_len = m->event_len;
    fm->from = m->from;
    fm->from_len = m->from_len;
    fm->data = m->data;
    fm->data_len = m->data_len;
    fm->time = m->published;
}

apr_status_t comet_render_poll(comet_buf_t *buf, comet_buf_t *tmp,
                               apr_uint32_t epoch, const char *const *ids,
                               apr_uint64_t *seqs, apr_size_t nchan,
                               const comet_read_t *const *reads,
                               int missed, apr_size_t limit, int *complete)
{
    char idbuf[COMET_MSGID_COMPOUND_MAXLEN(1024)];
    comet_frame_poll_t list, poll;
    apr_size_t idlen;
    apr_status_t rv;
    int all = 1;

    /* The messages first, into tmp: which of them fit decides the id,
     * which the document names before them. */
    comet_buf_truncate(tmp, 0);
    list.buf = tmp;
    list.start = 0;
    list.messages = 0;
    for (apr_size_t c = 0; c < nchan && all; c++) {
        const comet_read_t *rd = reads[c];

        if (rd) {
            restart_seq(rd, &seqs[c]);
        }
        for (int i = 0; rd && i < rd->msgs->nelts; i++) {
            const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
            comet_frame_msg_t fm;
            char one[COMET_MSGID_MAXLEN];
            apr_size_t before = tmp->len;

            if (m->id.seq <= seqs[c]) {
                continue;
            }
            poll_msg(&fm, one, ids[c], m);
            if ((rv = comet_frame_poll_add(&list, &fm)) != APR_SUCCESS) {
                return rv;
            }
            if (limit && list.messages > 1 && tmp->len > limit) {
                comet_buf_truncate(tmp, before);
                list.messages--;
                all = 0;
                break;
            }
            seqs[c] = m->id.seq;
        }
    }
    if (complete) {
        *complete = all;
    }
    idlen = comet_render_position_id(idbuf, epoch, seqs, nchan);
    if ((rv = comet_frame_poll_begin(&poll, buf, idbuf, idlen, missed))
        != APR_SUCCESS
        || (rv = comet_buf_append(buf, tmp->data, tmp->len)) != APR_SUCCESS) {
        return rv;
    }
    return comet_frame_poll_end(&poll);
}

apr_size_t comet_render_frame_max(apr_size_t max_message,
                                  apr_size_t max_channel_id)
{
    /* Payload: 6 bytes each at most, plus the last line's "data:\n" and
     * the blank line.  Around it: the compound id (SSE) or the message's
     * own, the channel id (JSON; an SSE event name "<channel>#<event>"),
     * the event type and the sender's identity escaped, the time, the
     * field names and the chunk's size line. */
    return 6 * max_message + 8
           + COMET_MSGID_COMPOUND_MAXLEN(1024)
           + 2 * max_channel_id
           + 6 * COMET_STORE_EVENT_MAX
           + 6 * COMET_STORE_FROM_MAX
           + 256;
}
