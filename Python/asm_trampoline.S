/*
 * The template that Python/perf_trampoline.c copies once per code object.
 *
 *     PyObject *_Py_trampoline_func_start(PyThreadState *tstate,
 *                                         _PyInterpreterFrame *frame,
 *                                         int throwflag,
 *                                         _PyFrameEvalFunction evaluator);
 *
 * It builds an ordinary frame-pointer frame and calls
 * evaluator(tstate, frame, throwflag): the first three arguments are already
 * in the right registers.  A copy at a distinct address per code object gives
 * every Python function its own return address on the native stack, which
 * perf names through /tmp/perf-PID.map or a jitdump.
 *
 * Keeping the frame-pointer chain intact lets `perf record -g` walk through
 * the copies; the labels below mark the instruction boundaries at which the
 * canonical frame address changes, so that the unwind information written
 * for the jitdump (Python/perf_jit_trampoline.c) is derived from the code
 * itself rather than from hard-coded offsets.  The .cfi directives give the
 * template the same description in the binary's own .eh_frame.
 */

#if defined(__x86_64__) || defined(__aarch64__)

    .text
    .globl  _Py_trampoline_func_start
    .type   _Py_trampoline_func_start, @function
    .globl  _Py_trampoline_frame_pushed
    .globl  _Py_trampoline_frame_set
    .globl  _Py_trampoline_frame_popped
    .globl  _Py_trampoline_func_end
    .hidden _Py_trampoline_func_start, _Py_trampoline_frame_pushed
    .hidden _Py_trampoline_frame_set, _Py_trampoline_frame_popped
    .hidden _Py_trampoline_func_end
    .p2align 4
_Py_trampoline_func_start:
    .cfi_startproc
#if defined(__x86_64__)
#  if defined(__CET__) && (__CET__ & 1)
    endbr64
#  endif
    push    %rbp
_Py_trampoline_frame_pushed:
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    mov     %rsp, %rbp
_Py_trampoline_frame_set:
    .cfi_def_cfa_register %rbp
    call    *%rcx
    pop     %rbp
_Py_trampoline_frame_popped:
    .cfi_def_cfa %rsp, 8
    ret
#else /* __aarch64__ */
#  if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
    hint    #34                     /* bti c */
#  endif
    stp     x29, x30, [sp, #-16]!
_Py_trampoline_frame_pushed:
    .cfi_def_cfa_offset 16
    .cfi_offset x29, -16
    .cfi_offset x30, -8
    mov     x29, sp
_Py_trampoline_frame_set:
    .cfi_def_cfa_register x29
    blr     x3
    ldp     x29, x30, [sp], #16
_Py_trampoline_frame_popped:
    .cfi_def_cfa sp, 0
    .cfi_restore x29
    .cfi_restore x30
    ret
#endif
    .cfi_endproc
_Py_trampoline_func_end:
    .size   _Py_trampoline_func_start, _Py_trampoline_func_end - _Py_trampoline_func_start

#endif /* __x86_64__ || __aarch64__ */

    .section .note.GNU-stack,"",@progbits

/*
 * Declare the control-flow protection the template honours, so that linking
 * this object does not switch IBT/SHSTK (x86-64) or BTI/PAC (AArch64) off for
 * the whole binary.
 */
#if defined(__x86_64__) && defined(__CET__)
    .section .note.gnu.property,"a"
    .p2align 3
    .long   4                       /* name size: "GNU\0" */
    .long   16                      /* descriptor size */
    .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .long   0xc0000002              /* GNU_PROPERTY_X86_FEATURE_1_AND */
    .long   4
    .long   __CET__                 /* bit 0 IBT, bit 1 SHSTK */
    .p2align 3
#elif defined(__aarch64__) && defined(__ARM_FEATURE_BTI_DEFAULT)
    .section .note.gnu.property,"a"
    .p2align 3
    .long   4
    .long   16
    .long   5
    .asciz  "GNU"
    .long   0xc0000000              /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
    .long   4
    .long   1                       /* BTI */
    .p2align 3
#endif
