// gpu_serving_bench: llama-bench's prompt-processing and generation loops over several GGUF models at once, interleaved.
//
// The timing driver of benchmarks/gpu_serving_study.py (which builds it; see that file). It is llama.cpp's
// tools/llama-bench/llama-bench.cpp `test_prompt` / `test_gen` (random token ids, prompt in n_batch chunks, one
// llama_decode per generated token, llama_synchronize before the clock stops), with what llama-bench cannot do for a
// side-by-side comparison: every model stays loaded, each round visits every slot once in a rotating order, and two
// slots may share one model (an A/A control: same weights, separate context and KV cache).
//
// usage: gpu_serving_bench --slot LABEL=FILE.gguf [--slot ...] [--prompts 512,4096] [--gen 128] [--rounds 5]
//            [--warmup 1] [--n-gpu-layers 999] [--threads N] [--flash-attn auto|on|off] [--batch 2048]
//            [--ubatch 512] [--deadline-s 0] [--seed 1]
//
// Per visit of a slot: for each prompt length p (ascending), the KV cache is cleared and the p-token prompt is timed
// ("pp<p>"); generation of --gen tokens is then timed right after the longest prompt ("tg<n>@d<p>": decode at depth
// p) and from an empty cache ("tg<n>"). Output: one JSON object per line on stdout (events "device", "loaded",
// "measure", "round", "stopped", "done"), flushed as it goes, so a run cut short leaves everything measured so far.
// llama.cpp's own log goes to stderr. Exit status: 0, or 1 with a one-line message on stderr.

#include "ggml-backend.h"
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
    std::vector<std::pair<std::string, std::string>> slots;  // label, file
    std::vector<int> prompts = {512, 4096};
    int gen = 128;
    int rounds = 5;
    int warmup = 1;
    int n_gpu_layers = 999;
    int threads = 0;
    std::string flash_attn = "auto";
    int batch = 2048;
    int ubatch = 512;
    double deadline_s = 0.0;
    unsigned seed = 1;
};

[[noreturn]] void fail(const std::string & message) {
    std::fprintf(stderr, "gpu_serving_bench: %s\n", message.c_str());
    std::exit(1);
}

std::string json_string(const std::string & text) {
    std::string out = "\"";
    for (char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof(buf), "\\u%04x", c);
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    return out + "\"";
}

void emit(const std::string & line) {
    std::fputs(line.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

int to_int(const std::string & flag, const std::string & value) {
    char * end = nullptr;
    const long parsed = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0') {
        fail(flag + " takes an integer, got '" + value + "'");
    }
    return static_cast<int>(parsed);
}

Options parse(int argc, char ** argv) {
    Options opt;
    for (int i = 1; i < argc; i++) {
        const std::string flag = argv[i];
        if (i + 1 >= argc) {
            fail(flag + " needs a value");
        }
        const std::string value = argv[++i];
        if (flag == "--slot") {
            const size_t eq = value.find('=');
            if (eq == std::string::npos || eq == 0 || eq + 1 == value.size()) {
                fail("--slot takes LABEL=FILE, got '" + value + "'");
            }
            opt.slots.emplace_back(value.substr(0, eq), value.substr(eq + 1));
        } else if (flag == "--prompts") {
            opt.prompts.clear();
            std::stringstream stream(value);
            std::string item;
            while (std::getline(stream, item, ',')) {
                opt.prompts.push_back(to_int(flag, item));
            }
            std::sort(opt.prompts.begin(), opt.prompts.end());
        } else if (flag == "--gen") {
            opt.gen = to_int(flag, value);
        } else if (flag == "--rounds") {
            opt.rounds = to_int(flag, value);
        } else if (flag == "--warmup") {
            opt.warmup = to_int(flag, value);
        } else if (flag == "--n-gpu-layers") {
            opt.n_gpu_layers = to_int(flag, value);
        } else if (flag == "--threads") {
            opt.threads = to_int(flag, value);
        } else if (flag == "--flash-attn") {
            if (value != "auto" && value != "on" && value != "off") {
                fail("--flash-attn takes auto, on or off, got '" + value + "'");
            }
            opt.flash_attn = value;
        } else if (flag == "--batch") {
            opt.batch = to_int(flag, value);
        } else if (flag == "--ubatch") {
            opt.ubatch = to_int(flag, value);
        } else if (flag == "--deadline-s") {
            opt.deadline_s = std::strtod(value.c_str(), nullptr);
        } else if (flag == "--seed") {
            opt.seed = static_cast<unsigned>(to_int(flag, value));
        } else {
            fail("unknown option " + flag + " (see the comment at the top of gpu_serving_bench.cpp)");
        }
    }
    if (opt.slots.empty()) {
        fail("no --slot LABEL=FILE given");
    }
    if (opt.prompts.empty() || opt.prompts.front() < 1 || opt.gen < 1 || opt.rounds < 1 || opt.warmup < 0) {
        fail("--prompts must be positive, --gen and --rounds at least 1, --warmup at least 0");
    }
    return opt;
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Slot {
    std::string label;
    std::string file;
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    int n_vocab = 0;
};

// llama-bench's test_prompt: the prompt in n_batch chunks of random tokens (BOS first where the vocab adds one).
bool run_prompt(Slot & slot, int n_prompt, int n_batch, std::mt19937 & rng) {
    const llama_vocab * vocab = llama_model_get_vocab(slot.model);
    std::vector<llama_token> tokens(n_batch);
    int done = 0;
    while (done < n_prompt) {
        const int n = std::min(n_prompt - done, n_batch);
        for (int i = 0; i < n; i++) {
            tokens[i] = static_cast<llama_token>(rng() % slot.n_vocab);
        }
        if (done == 0 && llama_vocab_get_add_bos(vocab)) {
            tokens[0] = llama_vocab_bos(vocab);
        }
        if (llama_decode(slot.ctx, llama_batch_get_one(tokens.data(), n)) != 0) {
            return false;
        }
        done += n;
    }
    llama_synchronize(slot.ctx);
    return true;
}

// llama-bench's test_gen: one token per llama_decode, synchronized after each.
bool run_gen(Slot & slot, int n_gen, std::mt19937 & rng) {
    llama_token token = static_cast<llama_token>(rng() % slot.n_vocab);
    for (int i = 0; i < n_gen; i++) {
        if (llama_decode(slot.ctx, llama_batch_get_one(&token, 1)) != 0) {
            return false;
        }
        llama_synchronize(slot.ctx);
        token = static_cast<llama_token>(rng() % slot.n_vocab);
    }
    return true;
}

void measure(const std::string & label, int round, bool warmup, const std::string & test, int n_tokens, int depth,
             double seconds) {
    std::ostringstream line;
    line.precision(9);
    line << "{\"event\":\"measure\",\"round\":" << round << ",\"warmup\":" << (warmup ? "true" : "false")
         << ",\"slot\":" << json_string(label) << ",\"test\":" << json_string(test) << ",\"n_tokens\":" << n_tokens
         << ",\"depth\":" << depth << ",\"seconds\":" << seconds << "}";
    emit(line.str());
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        std::fputs(text, stderr);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    const Options opt = parse(argc, argv);
    const auto start = Clock::now();
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        size_t free_bytes = 0, total_bytes = 0;
        ggml_backend_dev_memory(dev, &free_bytes, &total_bytes);
        std::ostringstream line;
        line << "{\"event\":\"device\",\"name\":" << json_string(ggml_backend_dev_name(dev))
             << ",\"description\":" << json_string(ggml_backend_dev_description(dev)) << ",\"free_bytes\":" << free_bytes
             << ",\"total_bytes\":" << total_bytes << "}";
        emit(line.str());
    }
    {
        std::ostringstream line;
        line << "{\"event\":\"system\",\"info\":" << json_string(llama_print_system_info()) << "}";
        emit(line.str());
    }

    // One model per distinct file; one context per slot.
    std::map<std::string, llama_model *> models;
    std::vector<Slot> slots;
    const int n_ctx = opt.prompts.back() + opt.gen;
    for (const auto & [label, file] : opt.slots) {
        Slot slot;
        slot.label = label;
        slot.file = file;
        const auto load_start = Clock::now();
        bool loaded_now = false;
        if (models.count(file) == 0) {
            llama_model_params mparams = llama_model_default_params();
            mparams.n_gpu_layers = opt.n_gpu_layers;
            llama_model * model = llama_model_load_from_file(file.c_str(), mparams);
            if (model == nullptr) {
                fail("could not load '" + file + "' (llama.cpp's log above says why)");
            }
            models[file] = model;
            loaded_now = true;
        }
        slot.model = models[file];
        const double load_s = seconds_since(load_start);

        llama_context_params cparams = llama_context_default_params();
        cparams.n_ctx = static_cast<uint32_t>(n_ctx);
        cparams.n_batch = static_cast<uint32_t>(opt.batch);
        cparams.n_ubatch = static_cast<uint32_t>(opt.ubatch);
        cparams.no_perf = true;
        cparams.flash_attn_type = opt.flash_attn == "on"    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                  : opt.flash_attn == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                            : LLAMA_FLASH_ATTN_TYPE_AUTO;
        if (opt.threads > 0) {
            cparams.n_threads = opt.threads;
            cparams.n_threads_batch = opt.threads;
        }
        slot.ctx = llama_init_from_model(slot.model, cparams);
        if (slot.ctx == nullptr) {
            fail("could not create a context of " + std::to_string(n_ctx) + " tokens for '" + label + "'");
        }
        slot.n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(slot.model));
        if (slot.n_vocab < 1) {
            fail("'" + file + "' has no vocabulary size (write tokenizer.ggml.model = no_vocab and vocab_size)");
        }
        char desc[256];
        llama_model_desc(slot.model, desc, sizeof(desc));
        std::ostringstream line;
        line.precision(6);
        line << "{\"event\":\"loaded\",\"slot\":" << json_string(label) << ",\"file\":" << json_string(file)
             << ",\"shared_model\":" << (loaded_now ? "false" : "true") << ",\"load_s\":" << load_s
             << ",\"desc\":" << json_string(desc) << ",\"n_layer\":" << llama_model_n_layer(slot.model)
             << ",\"n_params\":" << llama_model_n_params(slot.model) << ",\"size_bytes\":"
             << llama_model_size(slot.model) << ",\"n_vocab\":" << slot.n_vocab << ",\"n_ctx\":" << n_ctx << "}";
        emit(line.str());
        slots.push_back(slot);
    }

    std::mt19937 rng(opt.seed);
    const int total_rounds = opt.warmup + opt.rounds;
    const std::string gen_test = "tg" + std::to_string(opt.gen);
    double longest_round = 0.0;
    int rounds_done = 0;
    for (int round = 0; round < total_rounds; round++) {
        const double elapsed = seconds_since(start);
        if (opt.deadline_s > 0 && round > 0 && elapsed + longest_round > opt.deadline_s) {
            std::ostringstream line;
            line << "{\"event\":\"stopped\",\"reason\":\"deadline\",\"rounds_done\":" << rounds_done
                 << ",\"elapsed_s\":" << elapsed << "}";
            emit(line.str());
            break;
        }
        const auto round_start = Clock::now();
        const bool warmup = round < opt.warmup;
        for (size_t visit = 0; visit < slots.size(); visit++) {
            Slot & slot = slots[(visit + static_cast<size_t>(round)) % slots.size()];
            llama_memory_t memory = llama_get_memory(slot.ctx);
            for (int p : opt.prompts) {
                llama_memory_clear(memory, true);
                const auto t0 = Clock::now();
                if (!run_prompt(slot, p, opt.batch, rng)) {
                    fail("prompt of " + std::to_string(p) + " tokens failed on '" + slot.label + "'");
                }
                measure(slot.label, round, warmup, "pp" + std::to_string(p), p, 0, seconds_since(t0));
            }
            const int depth = opt.prompts.back();
            auto t0 = Clock::now();
            if (!run_gen(slot, opt.gen, rng)) {
                fail("generation at depth " + std::to_string(depth) + " failed on '" + slot.label + "'");
            }
            measure(slot.label, round, warmup, gen_test + "@d" + std::to_string(depth), opt.gen, depth,
                    seconds_since(t0));
            llama_memory_clear(memory, true);
            t0 = Clock::now();
            if (!run_gen(slot, opt.gen, rng)) {
                fail("generation failed on '" + slot.label + "'");
            }
            measure(slot.label, round, warmup, gen_test, opt.gen, 0, seconds_since(t0));
        }
        const double took = seconds_since(round_start);
        longest_round = std::max(longest_round, took);
        rounds_done += warmup ? 0 : 1;
        std::ostringstream line;
        line << "{\"event\":\"round\",\"round\":" << round << ",\"warmup\":" << (warmup ? "true" : "false")
             << ",\"seconds\":" << took << "}";
        emit(line.str());
    }

    for (Slot & slot : slots) {
        llama_free(slot.ctx);
    }
    for (auto & [file, model] : models) {
        llama_model_free(model);
    }
    llama_backend_free();
    std::ostringstream line;
    line << "{\"event\":\"done\",\"rounds_done\":" << rounds_done << ",\"elapsed_s\":" << seconds_since(start) << "}";
    emit(line.str());
    return 0;
}
