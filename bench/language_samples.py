"""Support-chat texts written for the language benchmark: (expected BCP 47 code, text), short ones and sentences.

Short texts are what customers send on chat channels most: a greeting, a thanks, a few words. For Latin-script
languages a one- or two-word text is genuinely ambiguous ("ok", "Hola"), so ``und`` is the right answer there and
counts as undetermined, not wrong; a wrong code is what routes a ticket to the wrong team.
"""

# ruff: noqa: RUF001 (texts in many scripts: their letters are meant)
from __future__ import annotations

SHORT: list[tuple[str, str]] = [
    ("zh", "你好"), ("zh", "谢谢"), ("zh", "謝謝"), ("zh", "收到了，謝謝"), ("zh", "订单号是多少？"),
    ("zh", "退款了吗"), ("zh", "我要退貨"),
    ("ja", "ありがとう"), ("ja", "こんにちは"), ("ja", "届きました"), ("ja", "返品したいです"),
    ("ko", "감사합니다"), ("ko", "안녕하세요"), ("ko", "배송 언제 와요?"), ("ko", "환불해 주세요"),
    ("th", "ขอบคุณครับ"), ("th", "สวัสดีค่ะ"),
    ("ml", "നന്ദി"), ("ml", "ഓർഡർ എവിടെ?"), ("te", "ధన్యవాదాలు"), ("te", "నమస్కారం"),
    ("ta", "நன்றி"), ("ta", "வணக்கம்"), ("kn", "ಧನ್ಯವಾದಗಳು"), ("gu", "આભાર"), ("pa", "ਧੰਨਵਾਦ"),
    ("bn", "ধন্যবাদ"), ("hi", "नमस्ते"), ("hi", "धन्यवाद"), ("hi", "ऑर्डर कहाँ है?"),
    ("ar", "شكرا"), ("ar", "مرحبا"), ("ar", "أين طلبي؟"), ("fa", "متشکرم"), ("fa", "سفارش من کجاست؟"),
    ("ur", "شکریہ"),
    ("ru", "Спасибо"), ("ru", "Где мой заказ?"), ("ru", "Здравствуйте"), ("uk", "Дякую"), ("uk", "Привіт"),
    ("uk", "Де моє замовлення?"),
    ("el", "Ευχαριστώ"), ("el", "Γεια σας"), ("he", "תודה רבה"), ("he", "שלום"), ("ka", "მადლობა"),
    ("hy", "Շնորհակալություն"),
    ("en", "thanks"), ("en", "ok"), ("de", "Danke schön"), ("fr", "Merci beaucoup"), ("es", "Hola que tal"),
    ("it", "Grazie mille"), ("pt", "Obrigado"), ("nl", "Dank je wel"), ("pl", "Dziękuję bardzo"),
    ("sv", "Tack så mycket"), ("tr", "Teşekkürler"), ("vi", "Cảm ơn bạn"),
]

SENTENCES: list[tuple[str, str]] = [
    ("en", "Hi, my parcel was supposed to arrive on Monday and it still has not come. Can you check?"),
    ("en", "The app keeps logging me out every time I open it"),
    ("de", "Hallo, ich habe meine Bestellung vor zwei Wochen aufgegeben und noch nichts erhalten."),
    ("de", "Können Sie mir bitte sagen, wann das Paket ankommt?"),
    ("fr", "Bonjour, je n'ai toujours pas reçu mon colis, pouvez-vous vérifier s'il vous plaît ?"),
    ("fr", "La facture que vous m'avez envoyée contient une erreur sur l'adresse."),
    ("es", "Buenas tardes, quisiera cambiar la dirección de entrega de mi pedido."),
    ("es", "El producto llegó roto y necesito que me devuelvan el dinero."),
    ("it", "Buongiorno, il pacco non è ancora arrivato e il tracciamento non si aggiorna da giorni."),
    ("pt", "Olá, comprei um casaco na semana passada e ainda não recebi nenhuma confirmação."),
    ("nl", "Goedemiddag, mijn pakket is beschadigd aangekomen, wat moet ik nu doen?"),
    ("pl", "Dzień dobry, zamówiłem buty tydzień temu i nadal nie dostałem paczki."),
    ("sv", "Hej, jag har fått fel storlek och vill byta till en större."),
    ("tr", "Merhaba, siparişim hâlâ gelmedi, kargo takip numarasını gönderebilir misiniz?"),
    ("vi", "Xin chào, tôi đã đặt hàng từ tuần trước nhưng vẫn chưa nhận được."),
    ("id", "Selamat siang, pesanan saya belum sampai padahal sudah lewat seminggu."),
    ("ru", "Добрый день, я оплатил заказ неделю назад, но он до сих пор не отправлен."),
    ("uk", "Доброго дня, я замовив куртку тиждень тому, але досі нічого не отримав."),
    ("bg", "Здравейте, поръчката ми още не е пристигнала, можете ли да проверите?"),
    ("ar", "مرحبا، لقد طلبت هاتفا منذ أسبوعين ولم يصلني حتى الآن، أرجو المساعدة."),
    ("fa", "سلام، سفارش من هنوز نرسیده است، لطفا پیگیری کنید."),
    ("hi", "नमस्ते, मैंने पिछले हफ्ते जूते मंगवाए थे लेकिन अभी तक नहीं मिले।"),
    ("ml", "നമസ്കാരം, ഞാൻ കഴിഞ്ഞ ആഴ്ച ഓർഡർ ചെയ്ത സാധനം ഇതുവരെ കിട്ടിയില്ല."),
    ("te", "నమస్తే, నేను గత వారం ఆర్డర్ చేసిన వస్తువు ఇంకా రాలేదు."),
    ("ta", "வணக்கம், நான் கடந்த வாரம் ஆர்டர் செய்த பொருள் இன்னும் வரவில்லை."),
    ("th", "สวัสดีครับ ผมสั่งสินค้าไปเมื่อสัปดาห์ที่แล้วแต่ยังไม่ได้รับเลย"),
    ("zh", "你好，我上周买的衣服到现在还没有收到，能帮我查一下物流吗？"),
    ("zh", "您好，我上週訂購的商品到現在還沒有收到，請幫我查詢一下物流狀況，謝謝。"),
    ("ja", "先週注文した商品がまだ届いていません。確認していただけますか？"),
    ("ko", "지난주에 주문한 상품이 아직 도착하지 않았습니다. 확인 부탁드립니다."),
    ("el", "Καλησπέρα, η παραγγελία μου δεν έχει φτάσει ακόμα, μπορείτε να ελέγξετε;"),
    ("he", "שלום, ההזמנה שלי עדיין לא הגיעה, אפשר לבדוק בבקשה?"),
]

SAMPLES: list[tuple[str, str]] = SHORT + SENTENCES
